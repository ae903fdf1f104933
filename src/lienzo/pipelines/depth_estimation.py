"""Monocular depth from an image with a DPT estimator, processed as diffusers' depth2img does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lienzo.io.dpt_files import locate_depth_estimator, read_depth_estimator, read_depth_processor
from lienzo.io.image_processor_files import DPTProcessorSettings
from lienzo.io.library import library_from_config
from lienzo.models.dpt import DPTDepthEstimator
from lienzo.pipelines.vision_inputs import dpt_pixels


@dataclass(frozen=True)
class DepthEstimator:
    """A DPT network with its image processor settings."""

    model: DPTDepthEstimator
    processor: DPTProcessorSettings


_LOADED: dict[tuple[str, str, str], DepthEstimator] = {}
"""Depth estimators read so far, by (weights folder, processor folder, device)."""


def load_depth_estimator(
    model_folder: Path | None = None, models_root: Path | None = None, device: torch.device | str = "cpu"
) -> DepthEstimator:
    """The estimator of a diffusers depth model folder (`depth_estimator/` + `feature_extractor/`), else the
    one in `models_root/depth/` (default: the configured models root), in float32 on `device` (DPT-Hybrid's
    normalisations want float32, as diffusers runs it under autocast); read once, then kept."""
    if models_root is None:
        models_root = library_from_config(allow_paths=True).root
    folder = Path(model_folder) if model_folder is not None and Path(model_folder).is_dir() else None
    weights, processor = locate_depth_estimator(folder, Path(models_root))
    key = (str(weights.resolve()), str(processor.resolve()), str(torch.device(device)))
    if key not in _LOADED:
        model = read_depth_estimator(weights).to(device)
        _LOADED[key] = DepthEstimator(model, read_depth_processor(processor))
    return _LOADED[key]


def estimate_depth(image: Image.Image, estimator: DepthEstimator) -> torch.Tensor:
    """DPT's raw prediction (H', W') for `image` at the processor's size (larger = nearer), float32, CPU.

    depth2img resizes it to latent size and scales it to [-1, 1] (pipelines.depth.depth_conditioning).
    """
    model = estimator.model
    pixels = dpt_pixels(image, estimator.processor).to(model.device, model.dtype)
    with torch.no_grad():
        return model(pixels)[0].float().cpu()


def depth_image(image: Image.Image, estimator: DepthEstimator) -> Image.Image:
    """A grayscale-as-RGB depth image at `image`'s size: the prediction resized bicubically and scaled by its
    minimum and maximum to 0..255 (near = white), as depth ControlNets expect."""
    depth = estimate_depth(image, estimator)[None, None]
    depth = F.interpolate(depth, size=(image.height, image.width), mode="bicubic", align_corners=False)[0, 0]
    low, high = depth.min(), depth.max()
    scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
    values = (scaled.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(np.stack([values] * 3, axis=-1), "RGB")
