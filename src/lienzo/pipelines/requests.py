"""Model-free checks of a generation request, shared by the CLI and the server before any model loads.

Messages name options in their command-line spelling: `--preview-every` is the `preview_every` key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lienzo.errors import InvalidArgumentError
from lienzo.models.specs import family_spec
from lienzo.pipelines.masking import check_multiple_of_8
from lienzo.pipelines.options import HiresOptions, resolve_options

SIDES = ("left", "right", "top", "bottom")
REFINER_EXTRAS = ("refiner", "refiner_switch_at")
MODE_EXTRAS = {
    "generate": ("preview_every", *REFINER_EXTRAS),
    "img2img": ("preview_every", *REFINER_EXTRAS),
    "inpaint": ("preview_every", "mask_blur", "only_masked", "padding", *REFINER_EXTRAS),
    "outpaint": ("preview_every", "mask_blur", *SIDES, *REFINER_EXTRAS),
    "depth2img": ("preview_every",),
}
"""The extras each mode takes besides the generation settings (None or absent = the default)."""
CHECK_FAMILY = "sd1"
"""Any family does: the settings checks do not depend on it, only the unused defaults do."""


def validate_request(mode: str, settings: Mapping[str, Any], extras: Mapping[str, Any] | None = None) -> None:
    """Raise InvalidArgumentError for a bad mode, setting or extra; `settings` are `resolve_options`'s."""
    if mode not in MODE_EXTRAS:
        raise InvalidArgumentError(f"unknown mode {mode!r}; use one of: {', '.join(MODE_EXTRAS)}")
    extras = {key: value for key, value in (extras or {}).items() if value is not None}
    unknown = sorted(set(extras) - set(MODE_EXTRAS[mode]))
    if unknown:
        raise InvalidArgumentError(
            f"{mode} does not take {', '.join(unknown)}; it takes {', '.join(MODE_EXTRAS[mode])}"
        )
    resolve_options(family_spec(CHECK_FAMILY), **_with_hires_options(settings))
    if extras.get("preview_every", 1) < 1:
        raise InvalidArgumentError(f"--preview-every must be 1 or more steps, got {extras['preview_every']}")
    if "padding" in extras:
        check_multiple_of_8("padding", extras["padding"])
    if mode == "outpaint":
        _check_margins({side: extras.get(side, 0) for side in SIDES})
    if "refiner_switch_at" in extras:
        _check_refiner_switch(extras)


def _with_hires_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings with a plain-dict `hires` turned into HiresOptions."""
    hires = settings.get("hires")
    if not isinstance(hires, Mapping):
        return dict(settings)
    try:
        return {**settings, "hires": HiresOptions(**hires)}
    except TypeError as error:
        raise InvalidArgumentError(
            f"hires takes scale, steps, strength and upscaler, got {', '.join(hires)}"
        ) from error


def _check_margins(margins: dict[str, int]) -> None:
    for side, pixels in margins.items():
        check_multiple_of_8(side, pixels)
    if not any(margins.values()):
        raise InvalidArgumentError("outpainting needs a margin: give --left, --right, --top or --bottom")


def _check_refiner_switch(extras: Mapping[str, Any]) -> None:
    if "refiner" not in extras:
        raise InvalidArgumentError("--refiner-switch-at needs --refiner PATH")
    if not 0 <= extras["refiner_switch_at"] <= 1:
        raise InvalidArgumentError(
            f"--refiner-switch-at must lie in [0, 1], got {extras['refiner_switch_at']}; try 0.8"
        )
