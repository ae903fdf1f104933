"""Outpainting: extend the canvas on any side, fill the new area from the edges, then inpaint it."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.images import ImageInput, load_image
from lienzo.pipelines.inpaint import inpaint
from lienzo.pipelines.masking import check_multiple_of_8
from lienzo.pipelines.steps import StepCallback

FILL_BLUR_RADIUS = 8
"""Blur (pixels) of the edge-stretched fill, so the new area starts from smooth colours, not streaks."""


def extend_canvas(
    image: Image.Image, left: int, top: int, right: int, bottom: int
) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask): the image on a larger canvas whose new area repeats the nearest edge pixels,
    blurred (A1111's "fill" idea), and a mask that is white exactly on the new area."""
    pixels = np.pad(np.asarray(image.convert("RGB")), ((top, bottom), (left, right), (0, 0)), mode="edge")
    canvas = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(FILL_BLUR_RADIUS))
    canvas.paste(image, (left, top))
    mask = Image.new("L", canvas.size, 255)
    mask.paste(0, (left, top, left + image.width, top + image.height))
    return canvas, mask


def outpaint(
    pipe,
    image: ImageInput,
    prompt: str,
    *,
    left: int = 0,
    right: int = 0,
    top: int = 0,
    bottom: int = 0,
    strength: float = 1.0,
    mask_blur: float = 4,
    callback: StepCallback | None = None,
    **settings,
) -> list[Image.Image]:
    """Extend `image` by the margins (multiples of 8 pixels) and paint the new area following `prompt`.

    The original region comes back unchanged; other keywords as `generate` (width/height default to
    the extended canvas).
    """
    margins = {"left": left, "right": right, "top": top, "bottom": bottom}
    for name, value in margins.items():
        check_multiple_of_8(name, value)
    if not any(margins.values()):
        raise InvalidArgumentError(
            "outpainting needs at least one margin: give left, right, top or bottom > 0"
        )
    canvas, mask = extend_canvas(load_image(image), left, top, right, bottom)
    return inpaint(
        pipe,
        canvas,
        mask,
        prompt,
        strength=strength,
        mask_blur=mask_blur,
        callback=callback,
        mode="outpaint",
        **settings,
    )
