"""Masks for inpainting: validation, blur, the "only masked" crop box, paste-back and latent-space helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image, ImageChops, ImageFilter

from lienzo.errors import InvalidArgumentError

MASK_THRESHOLD = 128
"""8-bit mask values at or above this are repainted (white = repaint), values below are kept."""

LATENT_FACTOR = 8
"""Pixels per latent cell along each side (the VAE's downsampling factor)."""


@dataclass(frozen=True)
class Box:
    """A pixel rectangle [left, right) x [top, bottom) in PIL's (left, top, right, bottom) order."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def as_tuple(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), as PIL's crop and paste take it."""
        return self.left, self.top, self.right, self.bottom


def check_multiple_of_8(name: str, value: int) -> None:
    """Raise InvalidArgumentError unless `value` is a non-negative multiple of 8."""
    if value < 0 or value % LATENT_FACTOR:
        raise InvalidArgumentError(
            f"{name} must be a non-negative multiple of 8 pixels, got {value}; "
            f"use {max(0, round(value / LATENT_FACTOR) * LATENT_FACTOR)}"
        )


def check_mask_size(mask: Image.Image, image: Image.Image) -> None:
    """Raise InvalidArgumentError when the mask and the image differ in size."""
    if mask.size != image.size:
        raise InvalidArgumentError(
            f"the mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
            "give a mask of the same size as the image (white = repaint, black = keep)"
        )


def as_mask(mask: Image.Image) -> Image.Image:
    """A single-channel 8-bit mask; transparent pixels of an RGBA mask count as black (keep)."""
    if mask.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", mask.size, (0, 0, 0, 255))
        mask = Image.alpha_composite(background, mask.convert("RGBA"))
    return mask.convert("L")


def binarize(mask: Image.Image) -> Image.Image:
    """The mask as pure black and white: 255 where the value is at least MASK_THRESHOLD, else 0."""
    return mask.point(lambda value: 255 if value >= MASK_THRESHOLD else 0)


def blur_mask(mask: Image.Image, radius: float) -> Image.Image:
    """A Gaussian blur of the mask (PIL's GaussianBlur; radius 0 returns it unchanged)."""
    if radius < 0:
        raise InvalidArgumentError(f"mask_blur must be 0 or more pixels, got {radius}")
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def composite_alpha(mask: Image.Image, blurred: Image.Image) -> Image.Image:
    """Paste-back weights: the blurred mask, but exactly 0 wherever the sharp mask keeps the original."""
    return ImageChops.darker(blurred, binarize(mask))


def mask_bounding_box(mask: Image.Image) -> Box | None:
    """The smallest box holding every repainted pixel, or None when the mask repaints nothing."""
    bounds = binarize(mask).getbbox()
    return None if bounds is None else Box(*bounds)


def _grow(start: int, end: int, length: int, limit: int) -> tuple[int, int]:
    """[start, end) grown about its centre to `length` (at most `limit`), kept inside [0, limit)."""
    length = min(length, limit)
    start = max(0, min(start - (length - (end - start)) // 2, limit - length))
    return start, start + length


def _round_up_to_8(length: int) -> int:
    return -(-length // LATENT_FACTOR) * LATENT_FACTOR


def _aspect_size(width: int, height: int, target_size: tuple[int, int]) -> tuple[int, int]:
    """The smallest size of at least width x height, in multiples of 8, with exactly the target's aspect."""
    target_width, target_height = (_round_up_to_8(side) for side in target_size)
    unit = math.gcd(target_width, target_height) // LATENT_FACTOR
    unit_width, unit_height = target_width // unit, target_height // unit
    count = max(-(-width // unit_width), -(-height // unit_height))
    return count * unit_width, count * unit_height


def crop_box(
    mask: Image.Image, padding: int, target_size: tuple[int, int], image_size: tuple[int, int]
) -> Box:
    """The "only masked" region: the mask's box plus padding, grown to the target aspect, multiples of 8.

    As A1111's inpaint-at-full-resolution, the box keeps inside the image and takes the aspect ratio of
    the generation size so the crop scales to it without distortion; where the image is too small for
    that, each side is rounded up to a multiple of 8 on its own and clamped to the image.
    """
    check_multiple_of_8("padding", padding)
    bounds = mask_bounding_box(mask)
    image_width, image_height = image_size
    if bounds is None:
        return Box(0, 0, image_width, image_height)
    left, right = max(0, bounds.left - padding), min(image_width, bounds.right + padding)
    top, bottom = max(0, bounds.top - padding), min(image_height, bounds.bottom + padding)
    width, height = _aspect_size(right - left, bottom - top, target_size)
    if width > image_width or height > image_height:
        width, height = _round_up_to_8(right - left), _round_up_to_8(bottom - top)
    left, right = _grow(left, right, width, image_width)
    top, bottom = _grow(top, bottom, height, image_height)
    return Box(left, top, right, bottom)


def paste_back(
    original: Image.Image, generated: Image.Image, alpha: Image.Image, box: Box | None = None
) -> Image.Image:
    """`generated` scaled to `box` (default: the whole image) and blended over `original` by `alpha`.

    Where `alpha` is 0 the original pixels come back bit for bit.
    """
    box = box or Box(0, 0, original.width, original.height)
    region = generated.convert("RGB")
    if region.size != (box.width, box.height):
        region = region.resize((box.width, box.height), Image.Resampling.LANCZOS)
    blended = Image.composite(region, original.crop(box.as_tuple()), alpha.crop(box.as_tuple()))
    result = original.copy()
    result.paste(blended, box.as_tuple())
    return result


def mask_to_tensor(mask: Image.Image) -> torch.Tensor:
    """A (1, 1, H, W) float32 tensor of the mask in [0, 1] (1 = repaint)."""
    values = torch.frombuffer(bytearray(mask.convert("L").tobytes()), dtype=torch.uint8)
    return values.reshape(1, 1, mask.height, mask.width).float() / 255


def latent_mask(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """The pixel mask binarized at 0.5, resized to (h, w) latent cells by nearest neighbour (as diffusers)."""
    binary = (mask >= 0.5).to(mask.dtype)
    return F.interpolate(binary, size=latent_size, mode="nearest")


def masked_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The image in [-1, 1] with the repainted region set to 0 (grey), the 9-channel models' conditioning."""
    return image * (mask < 0.5).to(image.dtype)
