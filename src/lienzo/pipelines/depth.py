"""Depth-to-image for SD 2 depth models: a user's depth map becomes the UNet's fifth input channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.depth_estimation import estimate_depth, load_depth_estimator
from lienzo.pipelines.generation import generate_latents, img2img_size, prompt_stages
from lienzo.pipelines.images import ImageInput, load_image, resize_image
from lienzo.pipelines.options import resolve_options
from lienzo.pipelines.records import attach_records
from lienzo.pipelines.sampling import ImageConditions
from lienzo.pipelines.steps import StepCallback, decode_latents, encode_images

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


def depth2img(
    pipe,
    image: ImageInput,
    depth: DepthInput | None,
    prompt: str,
    *,
    strength: float = 0.8,
    width: int | None = None,
    height: int | None = None,
    callback: StepCallback | None = None,
    progress: bool = True,
    **settings,
) -> list[Image.Image]:
    """img2img guided by a depth map (SD 2 depth models): the map is the UNet's extra input channel at
    every pass's size (hires fix included). Without a map (`depth` None) the model folder's DPT estimator
    (depth_estimator/ + feature_extractor/), else the models root's depth/ one, computes it from `image`."""
    if pipe.spec.variant != "depth":
        raise InvalidArgumentError(
            f"depth-to-image needs a depth model but {pipe.spec.name} is not one; "
            "load an SD 2 depth checkpoint (family sd2-depth)"
        )
    source = load_image(image)
    width, height = img2img_size(source, width, height)
    options = resolve_options(
        pipe.spec, prompt=prompt, strength=strength, width=width, height=height, mode="depth2img", **settings
    )
    if options.refiner is not None:
        raise InvalidArgumentError("depth models have no refiner; leave the refiner out of depth2img")
    if depth is None:
        estimator = load_depth_estimator(pipe.path, pipe.model_library().root, pipe.device)
        depth_map = estimate_depth(source, estimator)[None, None]
    else:
        depth_map = load_depth_map(depth)
    factor = pipe.spec.vae.downscale_factor

    def conditions(width: int, height: int) -> ImageConditions:
        return ImageConditions(concat=depth_conditioning(depth_map, (height // factor, width // factor)))

    start = encode_images(pipe.vae, [resize_image(source, options.width, options.height)], options.vae_tiling)
    stages = prompt_stages(pipe, options)
    run = {"start": start, "conditions": conditions, "callback": callback, "progress": progress}
    latents = generate_latents(pipe, options, stages=stages, **run)
    images = decode_latents(pipe.vae, latents, options.vae_tiling)
    attach_records(pipe, images, options, texts=stages[0].texts)
    return images
