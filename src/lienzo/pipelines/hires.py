"""Hires fix: generate at the base size, upscale the latent or the image, img2img at the larger size."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from .images import resize_image
from .img2img import img2img_latents
from .options import GenerationOptions, hires_size
from .refiner import EncodedPrompts
from .steps import StepCallback, decode_latents, encode_images, latent_shape

LATENT_MODES = {"latent": "bilinear", "latent-nearest": "nearest-exact"}


def upscale_latents(pipe, latents: torch.Tensor, width: int, height: int, upscaler: str) -> torch.Tensor:
    """Latents resized to an image of width x height: interpolated in latent space ("latent" bilinear,
    "latent-nearest"), or decoded, resized with Lanczos and encoded again ("image")."""
    if upscaler in LATENT_MODES:
        _, latent_height, latent_width = latent_shape(pipe, width, height)
        return F.interpolate(latents, size=(latent_height, latent_width), mode=LATENT_MODES[upscaler])
    images = [resize_image(image, width, height) for image in decode_latents(pipe, latents)]
    return encode_images(pipe, images).to(latents.device)


def hires_options(options: GenerationOptions) -> GenerationOptions:
    """The second pass's settings: the hires size, steps and strength; no further hires or refiner."""
    width, height = hires_size(options)
    hires = options.hires
    return replace(
        options,
        width=width,
        height=height,
        steps=hires.steps or options.steps,
        strength=hires.strength,
        hires=None,
        refiner=None,
    )


def hires_fix(
    pipe,
    options: GenerationOptions,
    prompts: EncodedPrompts,
    latents: torch.Tensor,
    *,
    callback: StepCallback | None = None,
    batch_start: int = 0,
) -> torch.Tensor:
    """The second pass: upscale first-pass latents, then img2img them at hires strength, seeded like the
    first pass (item i: seed + i) at the new shape."""
    second = hires_options(options)
    upscaled = upscale_latents(pipe, latents, second.width, second.height, options.hires.upscaler)
    prompts = EncodedPrompts(base=prompts.base)

    def staged(state: dict) -> None:
        callback({**state, "stage": "hires"})

    return img2img_latents(
        pipe, second, prompts, upscaled, callback=staged if callback else None, batch_start=batch_start
    )
