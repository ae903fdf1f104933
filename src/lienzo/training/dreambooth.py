"""DreamBooth (Ruiz et al. 2023): a full fine-tune on a few instance images, with prior preservation on class
images the base model drew (lienzo.recipes.class_images makes them); the result is a model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lienzo.errors import InvalidArgumentError, ModelNotFoundError
from lienzo.training.buckets import bucket_resolutions, nearest_bucket
from lienzo.training.captioned_dataset import CaptionedDataset, DataConfig, Example, image_files
from lienzo.training.finetune import (
    FinetuneConfig,
    check_model_output,
    model_run_folder,
    train_model_weights,
)
from lienzo.training.image_folder import CAPTION_SUFFIX, IMAGE_SUFFIXES, unreadable_images
from lienzo.training.latent_cache import CACHE_FOLDER, cache_latents
from lienzo.training.loop import SampleFn
from lienzo.training.method_run import RunOptions, check_trainable_family, diffusion_objective
from lienzo.training.prior_preservation import ClassImages, with_prior


@dataclass(frozen=True)
class DreamBoothConfig:
    """A DreamBooth run: images without a caption file are captioned `instance_prompt` (a caption file wins,
    as in kohya's DreamBooth folders); `finetune` says what is trained and kept (text encoder, EMA, save
    precision)."""

    instance_prompt: str
    finetune: FinetuneConfig = FinetuneConfig()

    def __post_init__(self) -> None:
        if not self.instance_prompt.strip():
            raise InvalidArgumentError("--instance-prompt is empty; describe the instance, e.g. 'a star'")


def instance_examples(data: DataConfig, instance_prompt: str) -> list[Example]:
    """The data folder's images (and kohya `N_name` sub-folders), each with its caption file's text or else
    the instance prompt; a missing or empty folder and unreadable images are errors naming the files."""
    folder = Path(data.folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"--data folder {folder} does not exist; give a folder of instance images")
    files = image_files(folder, data.repeats)
    if not files:
        raise InvalidArgumentError(
            f"--data folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
            "put the instance images there"
        )
    broken = unreadable_images([path for path, _ in files])
    if broken:
        raise InvalidArgumentError(
            f"{len(broken)} image(s) in {folder} cannot be read: {', '.join(broken[:10])}; fix or remove them"
        )
    buckets = bucket_resolutions(data.resolution, data.bucket_step) if data.buckets else None
    examples = []
    for path, repeats in files:
        caption_file = path.with_suffix(CAPTION_SUFFIX)
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        with Image.open(path) as image:
            size = nearest_bucket(image.size, buckets) if buckets else (data.resolution, data.resolution)
        examples.append(Example(path, caption or instance_prompt, repeats, size))
    return examples


def instance_dataset(
    options: RunOptions, config: DreamBoothConfig, model: Any, run_folder: Path
) -> CaptionedDataset:
    """The instance items, VAE-encoded once into the run folder with `cache_latents`."""
    data = options.data
    instances = CaptionedDataset(data, options.batch_size, instance_examples(data, config.instance_prompt))
    if options.cache_latents:
        cache_latents(instances, model.vae, run_folder / CACHE_FOLDER)
    return instances


def train_dreambooth(
    options: RunOptions,
    config: DreamBoothConfig,
    model: Any,
    out: str | Path,
    *,
    classes: ClassImages | None = None,
    resume: bool = False,
    sample_fn: SampleFn | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """Fine-tune `model` (loaded in float32) on the instance images, plus the weighted loss of the class
    images when given (prior preservation), and write the model to `out` (diffusers folder, or
    `.safetensors`); state, loss log and samples go to `model_run_folder(out)`."""
    out = Path(out)
    check_trainable_family(model.spec, "DreamBooth")
    check_model_output(out, resume)
    run = model_run_folder(out)
    instances = instance_dataset(options, config, model, run)
    model.unet.requires_grad_(True).train()
    base = diffusion_objective(
        options, model, instances, train_text_encoder=config.finetune.train_text_encoder
    )
    dataset, objective = with_prior(options, model, instances, base, classes, run)
    return train_model_weights(
        options,
        config.finetune,
        objective,
        dataset,
        model,
        out,
        resume=resume,
        sample_fn=sample_fn,
        device=device,
    )
