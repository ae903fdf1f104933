"""Pixels for the vision networks, prepared as transformers' DPT and CLIP image processors prepare them."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from lienzo.io.image_processor_files import CLIPProcessorSettings, DPTProcessorSettings


def dpt_size(width: int, height: int, settings: DPTProcessorSettings) -> tuple[int, int]:
    """DPTImageProcessor's output (width, height): the target size, or the scale nearest 1 of the two
    when keeping the aspect ratio, each side rounded to a multiple of `ensure_multiple_of`."""
    scale_height, scale_width = settings.size[0] / height, settings.size[1] / width
    if settings.keep_aspect_ratio:
        if abs(1 - scale_width) < abs(1 - scale_height):
            scale_height = scale_width
        else:
            scale_width = scale_height
    multiple = settings.ensure_multiple_of

    return round(scale_width * width / multiple) * multiple, round(
        scale_height * height / multiple
    ) * multiple


def _normalized(image: Image.Image, settings) -> torch.Tensor:
    """(3, H, W) float32: rescaled to [0, 1] and normalised by the settings' mean and std when they say so."""
    values = np.asarray(image, dtype=np.float32)
    if settings.do_rescale:
        values = values * np.float32(settings.rescale_factor)
    if settings.do_normalize:
        mean = np.asarray(settings.image_mean, dtype=np.float32)
        std = np.asarray(settings.image_std, dtype=np.float32)
        values = (values - mean) / std
    return torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1)))


def dpt_pixels(image: Image.Image, settings: DPTProcessorSettings) -> torch.Tensor:
    """(1, 3, H, W) float32 DPT input of an image (converted to RGB)."""
    image = image.convert("RGB")
    if settings.do_resize:
        image = image.resize(dpt_size(image.width, image.height, settings), settings.resample)
    return _normalized(image, settings)[None]


def clip_pixels(images: list[Image.Image], settings: CLIPProcessorSettings) -> torch.Tensor:
    """(B, 3, H, W) float32 CLIP input: shortest edge resized, centre cropped (zero-padded if too small)."""
    batch = []
    for image in images:
        image = image.convert("RGB")
        if settings.do_resize:
            short, long = sorted((image.width, image.height))
            edge, other = settings.shortest_edge, int(settings.shortest_edge * long / short)
            size = (edge, other) if image.width <= image.height else (other, edge)
            image = image.resize(size, settings.resample)
        pixels = _normalized(image, settings)
        if settings.do_center_crop:
            pixels = _center_crop(pixels, settings.crop_size)
        batch.append(pixels)
    return torch.stack(batch)


def _center_crop(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre (height, width) window, top-left biased on odd margins; smaller images are zero-padded."""
    height, width = size
    _, rows, columns = pixels.shape
    if rows < height or columns < width:
        padded = pixels.new_zeros(3, max(rows, height), max(columns, width))
        top, left = math.ceil((padded.shape[1] - rows) / 2), math.ceil((padded.shape[2] - columns) / 2)
        padded[:, top : top + rows, left : left + columns] = pixels
        pixels, rows, columns = padded, padded.shape[1], padded.shape[2]
    top, left = (rows - height) // 2, (columns - width) // 2
    return pixels[:, top : top + height, left : left + width]
