"""Inpainting with 9-channel inpaint models (masked-image conditioning) or ordinary ones (latent blending).

The region to work on (the whole image, or with `only_masked` a box around the mask plus padding) is
scaled to the generation size, repainted where the mask is white, scaled back and pasted over the
original through the mask, so every pixel outside the mask comes back exactly as it was.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.controlnets import crop_control_images
from lienzo.pipelines.generation import generate_latents, img2img_size, prompt_stages
from lienzo.pipelines.images import ImageInput, images_to_tensor, load_image, resize_image
from lienzo.pipelines.masking import (
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
from lienzo.pipelines.options import resolve_options
from lienzo.pipelines.records import attach_records
from lienzo.pipelines.sampling import ImageConditions
from lienzo.pipelines.steps import StepCallback, decode_latents, encode_images


@dataclass(frozen=True)
class InpaintRegion:
    """What the sampler works on: the region of the image and of the blurred mask, and where it goes back."""

    image: Image.Image
    mask: Image.Image
    box: Box

    def pixels_at(self, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image pixels in [-1, 1], mask in [0, 1]) of the region scaled to width x height."""
        pixels = images_to_tensor([resize_image(self.image, width, height)])
        return pixels, mask_to_tensor(resize_image(self.mask, width, height))


def inpaint_conditions(pipe, region: InpaintRegion, tiling: bool | None):
    """`conditions(width, height)` of a region: its latent and latent-size mask, and for inpaint models
    the mask and masked-image latent as extra channels (cached per size)."""

    @functools.cache
    def at(width: int, height: int) -> ImageConditions:
        pixels, mask = region.pixels_at(width, height)
        latent = encode_images(pipe.vae, pixels, tiling)
        small_mask = latent_mask(mask, tuple(latent.shape[-2:]))
        concat = None
        if pipe.spec.variant == "inpaint":
            masked = encode_images(pipe.vae, masked_image(pixels, mask), tiling)
            concat = torch.cat([small_mask, masked], dim=1)
        return ImageConditions(concat=concat, latent=latent, mask=small_mask)

    return at


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
    progress: bool = True,
    mode: str = "inpaint",
    refiner_model=None,
    **settings,
) -> list[Image.Image]:
    """Repaint the white part of `mask` in `image` following `prompt` (other keywords as `generate`,
    hires fix and the refiner included)."""
    if pipe.spec.variant not in (None, "inpaint"):
        raise InvalidArgumentError(
            f"inpainting needs an ordinary or an inpaint model, but {pipe.spec.name} is a "
            f"{pipe.spec.variant} model; load an SD 1.x/2.x/XL model or its -inpaint variant"
        )
    source, mask_image = load_image(image), load_mask(mask)
    check_mask_size(mask_image, source)
    check_multiple_of_8("padding", padding)
    width, height = working_size(source, only_masked, width, height)
    options = resolve_options(
        pipe.spec, prompt=prompt, width=width, height=height, strength=strength, mode=mode, **settings
    )
    blurred = blur_mask(mask_image, mask_blur)
    size = (options.width, options.height)
    box = crop_box(blurred, padding, size, source.size) if only_masked else Box(0, 0, *source.size)
    region = InpaintRegion(source.crop(box.as_tuple()), blurred.crop(box.as_tuple()), box)
    sampled = crop_control_images(options, box.as_tuple(), source.size) if only_masked else options
    conditions = inpaint_conditions(pipe, region, options.vae_tiling)
    start = None if options.strength == 1 else conditions(*size).latent
    stages = prompt_stages(pipe, options, refiner_model)
    run = {"start": start, "conditions": conditions, "callback": callback, "progress": progress}
    latents = generate_latents(pipe, sampled, stages=stages, **run)
    alpha = composite_alpha(mask_image, blurred)
    generated = decode_latents(pipe.vae, latents, options.vae_tiling)
    images = [paste_back(source, image, alpha, box) for image in generated]
    mask_record = {"blur": mask_blur, "only_masked": only_masked, "padding": padding}
    attach_records(pipe, images, options, mask=mask_record, refiner=refiner_model, texts=stages[0].texts)
    return images
