"""txt2img: seeded noise at sigma_max, sampled down to an image, optional refiner and hires fix."""

from __future__ import annotations

import torch
from PIL import Image

from .hires import hires_fix
from .options import GenerationOptions
from .refiner import EncodedPrompts, denoise_latents, encode_prompts_once
from .steps import (
    StepCallback,
    attach_records,
    batch_groups,
    decode_latents,
    initial_noise,
    item_generators,
    latent_shape,
    schedule_sigmas,
)


def txt2img_latents(
    pipe,
    options: GenerationOptions,
    prompts: EncodedPrompts,
    *,
    callback: StepCallback | None = None,
    batch_start: int = 0,
) -> torch.Tensor:
    """Final latents (scaled, float32) of options.batch_size items; item i's noise from seed + i."""
    generators = item_generators(options)
    shape = latent_shape(pipe, options.width, options.height)
    sigmas = schedule_sigmas(options)
    x = initial_noise(options, shape, generators).to(pipe.device) * sigmas[0]
    latents = denoise_latents(
        pipe, options, prompts, x, sigmas, generator=generators[0], callback=callback, batch_start=batch_start
    )
    if options.hires is not None:
        latents = hires_fix(pipe, options, prompts, latents, callback=callback, batch_start=batch_start)
    return latents


def txt2img(pipe, options: GenerationOptions, *, callback: StepCallback | None = None) -> list[Image.Image]:
    """Images for the options' prompt, each carrying its settings in image.info["lienzo"]."""
    prompts = encode_prompts_once(pipe, options)
    images = []
    for start, count in batch_groups(options):
        group = options.items(start, count)
        latents = txt2img_latents(pipe, group, prompts, callback=callback, batch_start=start)
        decoded = decode_latents(pipe, latents)
        attach_records(pipe, decoded, options, start)
        images.extend(decoded)
    return images
