"""Opt-in fast modes: speed-ups that change the image, each off by default.

- CFG truncation: classifier-free guidance for the first `cfg_cutoff` of the steps only, then the
  conditional prediction alone (one UNet row per image instead of two).
- DeepCache (Ma et al. 2023): the UNet runs whole on every `deepcache`-th step; the steps between
  reuse its deep features and recompute only the shallowest input block and the last output block.
- Token merging (Bolya & Hoffman 2023, ToMe for SD): self-attention at the UNet's highest resolution
  with attention (the latent's own in SD 1.x/2.x) runs on `tome` fewer tokens, the most similar ones
  averaged.

Their neutral settings (cutoff 1, deepcache 1, tome 0) are the exact path, bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lienzo.errors import InvalidArgumentError

MAX_TOME_RATIO = 0.9
"""The largest token merging ratio accepted (ToMe for SD shows results up to 0.6-0.75)."""


@dataclass(frozen=True)
class FastModes:
    """The image-changing speed-ups of one generation (`pipe.generate(..., fast=FastModes(...))`).

    cfg_cutoff: fraction of the steps that keep classifier-free guidance (1.0 = all, the exact path).
    deepcache: run the whole UNet every N-th step and reuse its deep features between (1 = every step).
    tome: fraction of the tokens merged away in self-attention at the highest resolution (0.0 = none).
    """

    cfg_cutoff: float = 1.0
    deepcache: int = 1
    tome: float = 0.0

    @property
    def exact(self) -> bool:
        """True when every mode is at its neutral setting (the image is the exact path's)."""
        return self == FastModes()

    def to_record(self) -> dict:
        """The modes as the image's record keeps them ({"cfg_cutoff", "deepcache", "tome"})."""
        return asdict(self)


def fast_modes_from(value: FastModes | dict | None) -> FastModes:
    """FastModes from an instance, a record's dict (missing keys neutral) or None (all neutral)."""
    if value is None:
        return FastModes()
    if isinstance(value, FastModes):
        return value
    if not isinstance(value, dict) or set(value) - set(FastModes.__dataclass_fields__):
        raise InvalidArgumentError(
            "fast modes are FastModes(cfg_cutoff=..., deepcache=..., tome=...) or a dict of those keys"
        )
    return FastModes(**{key: item for key, item in value.items() if item is not None})


def check_fast_modes(fast: FastModes) -> None:
    """Raise InvalidArgumentError, naming the fix, for a mode setting out of range."""
    if not isinstance(fast, FastModes):
        raise InvalidArgumentError("pass the fast modes as lienzo.FastModes(cfg_cutoff=..., ...)")
    if isinstance(fast.cfg_cutoff, bool) or not 0 <= fast.cfg_cutoff <= 1:
        raise InvalidArgumentError(
            "the CFG cutoff (--cfg-cutoff) is the fraction of steps that keep guidance, in [0, 1], "
            f"got {fast.cfg_cutoff}; "
            "try 0.5 (1 = guidance on every step)"
        )
    if isinstance(fast.deepcache, bool) or not isinstance(fast.deepcache, int) or fast.deepcache < 1:
        raise InvalidArgumentError(
            "DeepCache's refresh interval (--deepcache) is a whole number of steps, 1 or more, "
            f"got {fast.deepcache!r}; "
            "try 3 (1 = the whole UNet on every step)"
        )
    if isinstance(fast.tome, bool) or not 0 <= fast.tome <= MAX_TOME_RATIO:
        raise InvalidArgumentError(
            f"the token merging ratio (--tome) lies in [0, {MAX_TOME_RATIO}], got {fast.tome}; "
            "try 0.5 (0 = no merging)"
        )
