"""PIL images <-> tensors in [-1, 1], image loading and resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lienzo.errors import InvalidArgumentError

ImageInput = Image.Image | str | Path


def load_image(image: ImageInput) -> Image.Image:
    """An RGB PIL image from a PIL image or a path; an unreadable file raises InvalidArgumentError."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except FileNotFoundError as error:
        raise InvalidArgumentError(f"image {path} does not exist; check the path") from error
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidArgumentError(
            f"cannot read {path} as an image; give a PNG, JPEG or WebP file"
        ) from error


def resize_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` resized to (width, height) with Lanczos filtering, unchanged when already that size."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """(B, 3, H, W) float32 tensor in [-1, 1] from same-sized RGB images."""
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_to_images(images: torch.Tensor) -> list[Image.Image]:
    """RGB images from a (B, 3, H, W) tensor in [-1, 1]: clamp, scale to 0..255, round."""
    unit = (images.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
    pixels = (unit.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return [Image.fromarray(array) for array in pixels]
