"""img2img (SDEdit, Meng et al. 2022): noise an encoded image to a strength's sigma, then sample down."""

from __future__ import annotations

import torch
from PIL import Image

from ..diffusion import img2img_sigmas
from .images import ImageInput, load_image, resize_image
from .options import GenerationOptions
from .refiner import DenoiseWrapper, EncodedPrompts, denoise_latents, encode_prompts_once
from .steps import (
    StepCallback,
    attach_records,
    batch_groups,
    decode_latents,
    encode_images,
    initial_noise,
    item_generators,
    latent_shape,
    schedule_sigmas,
)


def img2img_latents(
    pipe,
    options: GenerationOptions,
    prompts: EncodedPrompts,
    init_latents: torch.Tensor,
    *,
    callback: StepCallback | None = None,
    batch_start: int = 0,
    wrap_denoise: DenoiseWrapper | None = None,
) -> torch.Tensor:
    """Latents of `options.batch_size` items started from init_latents (batch 1 or batch_size) at
    options.strength of a schedule of options.steps; item i's noise comes from seed + i."""
    latent_shape(pipe, options.width, options.height)
    generators = item_generators(options)
    noise = initial_noise(options, tuple(init_latents.shape[1:]), generators).to(pipe.device)
    sigmas = img2img_sigmas(schedule_sigmas(options), options.strength)
    x = init_latents.to(pipe.device).float() + noise * sigmas[0]
    return denoise_latents(
        pipe,
        options,
        prompts,
        x,
        sigmas,
        generator=generators[0],
        callback=callback,
        batch_start=batch_start,
        wrap_denoise=wrap_denoise,
    )


def img2img_size(image: Image.Image, width: int | None, height: int | None) -> tuple[int, int]:
    """The working size: the given one, else the image's own rounded down to multiples of 8."""
    return (width or max(8, image.width // 8 * 8), height or max(8, image.height // 8 * 8))


def img2img(
    pipe, image: ImageInput, options: GenerationOptions, *, callback: StepCallback | None = None
) -> list[Image.Image]:
    """Images from `image` (resized to the options' size) at options.strength, with their records."""
    source = resize_image(load_image(image), options.width, options.height)
    init_latents = encode_images(pipe, [source])
    prompts = encode_prompts_once(pipe, options)
    images = []
    for start, count in batch_groups(options):
        group = options.items(start, count)
        latents = img2img_latents(pipe, group, prompts, init_latents, callback=callback, batch_start=start)
        decoded = decode_latents(pipe, latents)
        attach_records(pipe, decoded, options, start)
        images.extend(decoded)
    return images
