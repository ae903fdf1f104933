"""ControlNet units: which ControlNet guides a generation, with which control image, how strongly and when.

Semantics follow diffusers and A1111's ControlNet extension: `strength` scales the residuals
(diffusers' controlnet_conditioning_scale, A1111's Weight); a unit acts on sampling step i of N while
i / N >= start and (i + 1) / N <= end; `mode` is A1111's control mode and `resize_mode` how the control
image is fitted to each pass's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lienzo.errors import InvalidArgumentError

CONTROL_MODES = {
    "balanced": "Balanced",
    "prompt": "My prompt is more important",
    "control": "ControlNet is more important",
}
"""Control modes and A1111's names for them: "balanced" adds the residuals at `strength` to both CFG
halves; "prompt" (A1111's soft injection) scales residual i of n by strength * 0.825 ** (n - 1 - i);
"control" (diffusers' guess mode) runs the ControlNet on the conditional half only, scaled by
strength * logspace(-1, 0, n)[i], and leaves the unconditional half unguided."""
RESIZE_MODES = {
    "just_resize": "Just Resize",
    "crop_and_resize": "Crop and Resize",
    "resize_and_fill": "Resize and Fill",
}
"""How a control image meets a pass's size (A1111's names): stretch to it; scale to cover it and crop the
centre; scale to fit inside it and fill the border with the median colour of the image's edge."""
PROMPT_MODE_DECAY = 0.825
"""A1111's soft-injection ratio between neighbouring residual scales ("My prompt is more important")."""
ADAPTER_SOFT_SCALES = (0.25, 0.62, 0.825, 1.0)
"""A1111's soft-injection scales of a T2I-Adapter's four features ("My prompt" and "ControlNet is more
important" modes)."""


@dataclass(frozen=True, eq=False)
class ControlUnit:
    """One ControlNet applied while sampling: `model` is a loaded ControlNet (`lienzo.load_controlnet`,
    `pipe.load_controlnet`) or a path or name in the models folder's controlnet/; `image` a PIL image or
    an image file; `preprocess` names the preprocessor that makes the control image from it ("none":
    the image is the control image) with `preprocess_options`, e.g. (("low_threshold", 50),) for canny
    (see preprocessors.PREPROCESSOR_OPTIONS)."""

    model: object
    image: object
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = "balanced"
    resize_mode: str = "crop_and_resize"
    preprocess: str = "none"
    preprocess_options: tuple[tuple[str, float], ...] = ()
    prepared: bool = False
    """True once the model is loaded and `image` is the preprocessed control image (resolve_units)."""


def check_control_unit(unit: ControlUnit, index: int = 0) -> None:
    """Raise InvalidArgumentError, naming the fix, for a unit's out-of-range value."""
    where = f"ControlNet unit {index}"
    if not isinstance(unit, ControlUnit):
        raise InvalidArgumentError(f"{where} is a {type(unit).__name__}; pass ControlUnit(model, image, ...)")
    if unit.model is None or unit.image is None:
        raise InvalidArgumentError(f"{where} needs both a ControlNet (model) and a control image (image)")
    if not isinstance(unit.model, str | Path) and not hasattr(unit.model, "model"):
        raise InvalidArgumentError(f"{where}: model must be a path, a name or a loaded ControlNet")
    if unit.strength < 0:
        raise InvalidArgumentError(
            f"{where}: strength must be 0 or more, got {unit.strength}; 1.0 is the default"
        )
    if not 0 <= unit.start <= unit.end <= 1:
        raise InvalidArgumentError(
            f"{where}: start and end must satisfy 0 <= start <= end <= 1, got {unit.start} and {unit.end}"
        )
    if unit.mode not in CONTROL_MODES:
        raise InvalidArgumentError(
            f"{where}: unknown control mode {unit.mode!r}; use {', '.join(CONTROL_MODES)}"
        )
    if unit.resize_mode not in RESIZE_MODES:
        raise InvalidArgumentError(
            f"{where}: unknown resize mode {unit.resize_mode!r}; use {', '.join(RESIZE_MODES)}"
        )


def acts_at(unit: ControlUnit, step: int, steps: int) -> bool:
    """Whether the unit acts on sampling step `step` of `steps` (diffusers' control_guidance_start/end)."""
    return step / steps >= unit.start and (step + 1) / steps <= unit.end
