"""Hires fix: generate at the base size, upscale the latent or the image, sample again at the larger size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lienzo.models.vae import AutoencoderKL
from lienzo.pipelines.images import resize_image
from lienzo.pipelines.options import GenerationOptions, hires_options
from lienzo.pipelines.sampling import ConditionsAt, Stage, sample_latents
from lienzo.pipelines.steps import StepCallback, decode_latents, encode_images

LATENT_MODES = {"latent": "bilinear", "latent-nearest": "nearest-exact"}


def upscale_latents(
    vae: AutoencoderKL, latents: torch.Tensor, width: int, height: int, upscaler: str, tiling: bool | None
) -> torch.Tensor:
    """Latents resized to an image of width x height: interpolated in latent space ("latent" bilinear,
    "latent-nearest"), or decoded, resized with Lanczos and encoded again ("image")."""
    if upscaler in LATENT_MODES:
        factor = vae.downscale_factor
        size = (height // factor, width // factor)
        return F.interpolate(latents, size=size, mode=LATENT_MODES[upscaler])
    images = [resize_image(image, width, height) for image in decode_latents(vae, latents, tiling)]
    return encode_images(vae, images, tiling).to(latents.device)


def hires_fix(
    stage: Stage,
    vae: AutoencoderKL,
    options: GenerationOptions,
    latents: torch.Tensor,
    *,
    conditions: ConditionsAt | None = None,
    callback: StepCallback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """The second pass: upscale first-pass latents, then sample them again from hires strength with the
    base model, seeded like the first pass (item i: seed + i) and conditioned at the new size."""
    second = hires_options(options)
    upscaled = upscale_latents(
        vae, latents, second.width, second.height, options.hires.upscaler, options.vae_tiling
    )
    return sample_latents(
        [stage],
        second,
        start=upscaled,
        conditions=conditions,
        callback=callback,
        progress=progress,
        stage_name="hires",
    )
