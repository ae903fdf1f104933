"""The fast modes (lienzo.pipelines.fast_modes) as A1111 settings: A1111's own token merging options and
two lienzo-named ones for DeepCache and the CFG cutoff, read from a request's `override_settings` or
else the server's /sdapi/v1/options.

A1111's rule (processing.py, get_token_merging_ratio): a request's or the options' `token_merging_ratio`;
for img2img without an override, `token_merging_ratio_img2img` where non-zero; for the hires pass,
`token_merging_ratio_hr` where non-zero. lienzo merges at one ratio in both passes, so a hires ratio
other than the first pass's is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.fast_modes import MAX_TOME_RATIO, FastModes

FAST_OPTIONS = {
    "token_merging_ratio": 0.0,
    "token_merging_ratio_img2img": 0.0,
    "token_merging_ratio_hr": 0.0,
    "lienzo_deepcache_interval": 1,
    "lienzo_cfg_cutoff": 1.0,
}
"""The fast-mode options and their defaults (the exact path), as /sdapi/v1/options lists them."""
RANGES = {
    "token_merging_ratio": (0.0, MAX_TOME_RATIO),
    "token_merging_ratio_img2img": (0.0, MAX_TOME_RATIO),
    "token_merging_ratio_hr": (0.0, MAX_TOME_RATIO),
    "lienzo_deepcache_interval": (1, 1000),
    "lienzo_cfg_cutoff": (0.0, 1.0),
}


def checked(name: str, value) -> float | int:
    """A fast-mode option's value, refused with its range unless a number in range (a whole one for
    the DeepCache interval)."""
    low, high = RANGES[name]
    whole = isinstance(FAST_OPTIONS[name], int)
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (whole and value != int(value)) or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        raise InvalidArgumentError(f"{name} must be {kind} in [{low}, {high}], got {value!r}")
    return int(value) if whole else float(value)


def check_fast_options(options: Mapping) -> None:
    """Raise InvalidArgumentError for a fast-mode option out of range (POST /sdapi/v1/options)."""
    for name in FAST_OPTIONS:
        if name in options:
            checked(name, options[name])


def request_fast_modes(mode: str, overrides: Mapping, options: Mapping, hires: bool) -> FastModes:
    """The fast modes of a txt2img or img2img request (A1111's rule, module docstring)."""

    def setting(name: str):
        return checked(name, overrides.get(name, options.get(name, FAST_OPTIONS[name])))

    tome = setting("token_merging_ratio")
    if mode == "img2img" and "token_merging_ratio" not in overrides:
        tome = setting("token_merging_ratio_img2img") or tome
    hires_tome = setting("token_merging_ratio_hr") or tome
    if hires and hires_tome != tome:
        raise InvalidArgumentError(
            f"token_merging_ratio_hr {hires_tome} differs from the first pass's ratio {tome}: lienzo "
            "merges tokens at one ratio in both passes; set token_merging_ratio_hr to 0 or to the same ratio"
        )
    return FastModes(
        cfg_cutoff=setting("lienzo_cfg_cutoff"), deepcache=setting("lienzo_deepcache_interval"), tome=tome
    )
