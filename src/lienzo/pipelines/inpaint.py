"""Inpainting with 9-channel inpaint models (masked-image conditioning) or ordinary ones (latent blending).

The region to work on (the whole image, or with `only_masked` a box around the mask plus padding) is
scaled to the generation size, repainted where the mask is white, scaled back and pasted over the
original through the mask, so every pixel outside the mask comes back exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ..diffusion import img2img_sigmas
from ..errors import InvalidArgumentError
from .images import ImageInput, images_to_tensor, load_image, resize_image
from .img2img import img2img_size
from .masking import (
    Box,
    as_mask,
    blur_mask,
    check_mask_size,
    check_multiple_of_8,
    composite_alpha,
    crop_box,
    latent_mask,
    mask_to_tensor,
    masked_image,
    paste_back,
)
from .options import GenerationOptions, resolve_options
from .steps import (
    StepCallback,
    attach_records,
    batch_groups,
    decode_latents,
    encode_images,
    initial_noise,
    inpaint_blend_denoiser,
    item_generators,
    latent_shape,
    make_denoiser,
    prompt_conditioning,
    run_sampler,
    schedule_sigmas,
)

INPAINT_CHANNELS = 9


@dataclass(frozen=True)
class InpaintRegion:
    """What the sampler works on: the region's pixels and mask at the generation size, and where it goes."""

    pixels: torch.Tensor
    mask: torch.Tensor
    box: Box


def load_mask(mask: ImageInput) -> Image.Image:
    """A single-channel mask from a PIL image or an image file (white = repaint)."""
    return as_mask(mask if isinstance(mask, Image.Image) else load_image(mask))


def working_size(
    image: Image.Image, only_masked: bool, width: int | None, height: int | None
) -> tuple[int | None, int | None]:
    """(width, height) to generate at: the given ones; else the family default (None) for "only masked",
    or the image's own size rounded down to multiples of 8."""
    if only_masked:
        return width, height
    return img2img_size(image, width, height)


def inpaint(
    pipe,
    image: ImageInput,
    mask: ImageInput,
    prompt: str,
    *,
    strength: float = 1.0,
    mask_blur: float = 4,
    only_masked: bool = False,
    padding: int = 32,
    width: int | None = None,
    height: int | None = None,
    callback: StepCallback | None = None,
    mode: str = "inpaint",
    **settings,
) -> list[Image.Image]:
    """Repaint the white part of `mask` in `image` following `prompt` (other keywords as `generate`)."""
    source, mask_image = load_image(image), load_mask(mask)
    check_mask_size(mask_image, source)
    check_multiple_of_8("padding", padding)
    width, height = working_size(source, only_masked, width, height)
    options = resolve_options(
        pipe.spec, prompt=prompt, width=width, height=height, strength=strength, mode=mode, **settings
    )
    if options.hires is not None or options.refiner is not None:
        raise InvalidArgumentError(
            "hires fix and the SDXL refiner apply to generate only; inpaint without them, then use img2img"
        )
    blurred = blur_mask(mask_image, mask_blur)
    size = (options.width, options.height)
    box = crop_box(blurred, padding, size, source.size) if only_masked else Box(0, 0, *source.size)
    region = InpaintRegion(
        pixels=images_to_tensor([resize_image(source.crop(box.as_tuple()), *size)]),
        mask=mask_to_tensor(resize_image(blurred.crop(box.as_tuple()), *size)),
        box=box,
    )
    latents = inpaint_latents(pipe, region, options, callback=callback)
    alpha = composite_alpha(mask_image, blurred)
    images = [paste_back(source, generated, alpha, box) for generated in decode_latents(pipe, latents)]
    attach_records(
        pipe, images, options, mask={"blur": mask_blur, "only_masked": only_masked, "padding": padding}
    )
    return images


def inpaint_latents(
    pipe, region: InpaintRegion, options: GenerationOptions, *, callback: StepCallback | None = None
) -> torch.Tensor:
    """Sample the region's latents: masked-image conditioning for 9-channel models, else latent blending."""
    in_channels = pipe.spec.unet.in_channels
    if in_channels not in (4, INPAINT_CHANNELS):
        raise InvalidArgumentError(
            f"inpainting needs an ordinary or an inpaint model, but {pipe.family} takes {in_channels} "
            "input channels; load an SD 1.x/2.x/XL model or its -inpaint variant"
        )
    channels, latent_height, latent_width = latent_shape(pipe, options.width, options.height)
    latent = encode_images(pipe, region.pixels)
    mask = latent_mask(region.mask, (latent_height, latent_width)).to(latent.device)
    cond, uncond = prompt_conditioning(pipe, options)
    sigmas = img2img_sigmas(schedule_sigmas(options), options.strength)
    if in_channels == INPAINT_CHANNELS:
        masked = encode_images(pipe, masked_image(region.pixels, region.mask))
        guided = make_denoiser(pipe, cond, uncond, options, torch.cat([mask, masked], dim=1))
    else:
        guided = make_denoiser(pipe, cond, uncond, options)
    results = []
    for start, count in batch_groups(options):
        group = options.items(start, count)
        generators = item_generators(group)
        noise = initial_noise(group, (channels, latent_height, latent_width), generators).to(latent.device)
        denoise = (
            guided if in_channels == INPAINT_CHANNELS else inpaint_blend_denoiser(guided, latent, mask, noise)
        )
        x = noise * sigmas[0] if options.strength == 1 else latent + noise * sigmas[0]
        results.append(
            run_sampler(
                denoise,
                x,
                sigmas,
                group,
                generator=generators[0],
                callback=callback,
                batch_start=start,
                progress=pipe.progress,
            )
        )
    return torch.cat(results)
