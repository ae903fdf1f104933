"""Depth-to-image for SD 2 depth models: a user's depth map becomes the UNet's fifth input channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import InvalidArgumentError

DepthInput = Image.Image | str | Path | torch.Tensor


def load_depth_map(depth: DepthInput) -> torch.Tensor:
    """A (1, 1, H, W) float32 depth map from an image (8- or 16-bit, any mode), a path or an (H, W) tensor."""
    if isinstance(depth, torch.Tensor):
        if depth.ndim != 2:
            raise InvalidArgumentError(f"a depth tensor must have shape (H, W), got {tuple(depth.shape)}")
        return depth.float()[None, None]
    if not isinstance(depth, Image.Image):
        path = Path(depth)
        try:
            with Image.open(path) as opened:
                depth = opened.copy()
        except FileNotFoundError as error:
            raise InvalidArgumentError(f"depth map {path} does not exist; check the path") from error
        except (UnidentifiedImageError, OSError) as error:
            raise InvalidArgumentError(
                f"cannot read {path} as an image; give a grayscale PNG depth map"
            ) from error
    if depth.mode not in ("I", "I;16", "F"):
        depth = depth.convert("L")
    values = np.asarray(depth, dtype=np.float32)
    return torch.from_numpy(values.copy())[None, None]


def depth_conditioning(depth: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Depth resized bicubically to latent size and scaled to [-1, 1] by its min and max, as diffusers.

    A constant depth map (no relief) gives zeros.
    """
    resized = F.interpolate(depth.float(), size=latent_size, mode="bicubic", align_corners=False)
    low = resized.amin(dim=(1, 2, 3), keepdim=True)
    high = resized.amax(dim=(1, 2, 3), keepdim=True)
    span = (high - low).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(high > low, 2.0 * (resized - low) / span - 1.0, torch.zeros_like(resized))
