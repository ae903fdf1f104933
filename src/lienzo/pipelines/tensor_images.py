"""Resampling, padding and mask operations on (B, C, H, W) tensors, as ComfyUI's image and latent nodes
do them: resizing with an optional centre crop to the target's aspect, padding an image for outpainting
with a feathered mask, and growing a mask."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.images import images_to_tensor, tensor_to_images

TENSOR_MODES = ("nearest-exact", "bilinear", "area", "bicubic")
"""Resampling methods done by torch interpolation; "lanczos" goes through PIL (8-bit images)."""


def centre_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The largest centred crop of `samples` with the aspect ratio width : height."""
    old_h, old_w = samples.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    if old_aspect > new_aspect:
        keep = round(old_w * new_aspect / old_aspect)
        left = (old_w - keep) // 2
        return samples[..., :, left : left + keep]
    keep = round(old_h * old_aspect / new_aspect)
    top = (old_h - keep) // 2
    return samples[..., top : top + keep, :]


def target_size(samples: torch.Tensor, width: int, height: int) -> tuple[int, int]:
    """(width, height), a 0 in one replaced to keep the aspect ratio; both 0 keeps the size."""
    old_h, old_w = samples.shape[-2:]
    if width == 0 and height == 0:
        return old_w, old_h
    if width == 0:
        width = max(1, round(old_w * height / old_h))
    if height == 0:
        height = max(1, round(old_h * width / old_w))
    return width, height


def resample(
    samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled"
) -> torch.Tensor:
    """`samples` (B, C, H, W) resized to height x width by `method` (TENSOR_MODES or "lanczos" for pixel
    tensors in [-1, 1]), centre-cropped to the new aspect first when crop is "center"."""
    if crop == "center":
        samples = centre_crop(samples, width, height)
    if method == "lanczos":
        images = [
            image.resize((width, height), Image.Resampling.LANCZOS) for image in tensor_to_images(samples)
        ]
        return images_to_tensor(images).to(samples)
    if method not in TENSOR_MODES:
        raise InvalidArgumentError(f"unknown upscale method {method!r}; use one of {', '.join(TENSOR_MODES)}")
    return F.interpolate(samples.float(), size=(height, width), mode=method)


def pad_for_outpaint(
    pixels: torch.Tensor, left: int, top: int, right: int, bottom: int, feathering: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(padded pixels in [-1, 1] with grey (0) margins, (B, 1, H, W) mask: 1 on the margins, and inside the
    original a quadratic ramp ((f - d) / f)^2 over `feathering` pixels from each padded side)."""
    batch, channels, height, width = pixels.shape
    padded = torch.zeros(batch, channels, height + top + bottom, width + left + right, dtype=pixels.dtype)
    padded[..., top : top + height, left : left + width] = pixels
    mask = torch.ones(batch, 1, *padded.shape[-2:])
    inner = torch.zeros(height, width)
    if feathering > 0 and feathering * 2 < min(height, width):
        rows = torch.arange(height)[:, None].expand(height, width).float()
        columns = torch.arange(width)[None, :].expand(height, width).float()
        distance = torch.full((height, width), math.inf)
        for padding, side in (
            (top, rows),
            (bottom, height - rows),
            (left, columns),
            (right, width - columns),
        ):
            if padding:
                distance = torch.minimum(distance, side)
        ramp = ((feathering - distance) / feathering).clamp(min=0) ** 2
        inner = torch.where(distance < feathering, ramp, inner)
    mask[..., top : top + height, left : left + width] = inner
    return padded, mask


def grow_mask(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """A (B, 1, H, W) mask, rounded, dilated by a cells x cells box (ComfyUI's grow_mask_by)."""
    rounded = mask.round()
    if cells <= 0:
        return rounded
    padding = math.ceil((cells - 1) / 2)
    kernel = torch.ones(1, 1, cells, cells, dtype=rounded.dtype)
    grown = F.conv2d(rounded, kernel, padding=padding).clamp(0, 1)
    return grown[..., : mask.shape[-2], : mask.shape[-1]].round()
