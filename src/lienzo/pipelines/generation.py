"""txt2img and img2img (SDEdit, Meng et al. 2022) as compositions of the one sampling path."""

from __future__ import annotations

import torch
from PIL import Image

from lienzo.pipelines.controlnets import control_conditions
from lienzo.pipelines.hires import hires_fix
from lienzo.pipelines.images import ImageInput, load_image, resize_image
from lienzo.pipelines.options import GenerationOptions
from lienzo.pipelines.records import attach_records
from lienzo.pipelines.sampling import ConditionsAt, Stage, sample_latents
from lienzo.pipelines.steps import StepCallback, decode_latents, encode_images, encode_texts


def prompt_stages(pipe, options: GenerationOptions, refiner=None) -> list[Stage]:
    """The base model's sampling stage and, with a refiner pipeline, the refiner's (text encoded once)."""
    stages = [Stage(pipe.unet, pipe.spec, encode_texts(pipe.clip, options))]
    if refiner is not None:
        texts = encode_texts(refiner.clip, options)
        scores = options.refiner.aesthetic_scores
        stages.append(Stage(refiner.unet, refiner.spec, texts, "refiner", scores))
    return stages


def generate_latents(
    pipe,
    options: GenerationOptions,
    *,
    stages: list[Stage] | None = None,
    start: torch.Tensor | None = None,
    conditions: ConditionsAt | None = None,
    refiner=None,
    callback: StepCallback | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Every mode's latents: sample (base, then the refiner), then the hires pass when asked for;
    `stages` default to `prompt_stages(pipe, options, refiner)`. The options' ControlNet units (loaded,
    see `Pipeline.resolve_controlnets`) guide every pass, their control images fitted to its size."""
    if stages is None:
        if (options.refiner is None) != (refiner is None):
            raise ValueError(
                "pass the loaded refiner exactly when the options ask for one (Pipeline.load_refiner)"
            )
        stages = prompt_stages(pipe, options, refiner)
    conditions = control_conditions(conditions, options.controlnets)
    run = {"conditions": conditions, "callback": callback, "progress": progress}
    latents = sample_latents(stages, options, start=start, **run)
    if options.hires is not None:
        latents = hires_fix(stages[0], pipe.vae, options, latents, **run)
    return latents


def txt2img(
    pipe,
    options: GenerationOptions,
    *,
    refiner=None,
    callback: StepCallback | None = None,
    progress: bool = True,
) -> list[Image.Image]:
    """Images for the options' prompt, each carrying its settings in image.info["lienzo"]."""
    stages = prompt_stages(pipe, options, refiner)
    latents = generate_latents(pipe, options, stages=stages, callback=callback, progress=progress)
    images = decode_latents(pipe.vae, latents, options.vae_tiling)
    attach_records(pipe, images, options, refiner=refiner, texts=stages[0].texts)
    return images


def img2img_size(image: Image.Image, width: int | None, height: int | None) -> tuple[int, int]:
    """The working size: the given one, else the image's own rounded down to multiples of 8."""
    return (width or max(8, image.width // 8 * 8), height or max(8, image.height // 8 * 8))


def img2img(
    pipe,
    image: ImageInput,
    options: GenerationOptions,
    *,
    refiner=None,
    callback: StepCallback | None = None,
    progress: bool = True,
) -> list[Image.Image]:
    """Images from `image` (resized to the options' size) at options.strength, with their records."""
    source = resize_image(load_image(image), options.width, options.height)
    start = encode_images(pipe.vae, [source], options.vae_tiling)
    stages = prompt_stages(pipe, options, refiner)
    run = {"callback": callback, "progress": progress}
    latents = generate_latents(pipe, options, stages=stages, start=start, **run)
    images = decode_latents(pipe.vae, latents, options.vae_tiling)
    attach_records(pipe, images, options, refiner=refiner, texts=stages[0].texts)
    return images
