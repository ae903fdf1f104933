"""DreamBooth (Ruiz et al. 2023): a full fine-tune on a few instance images, with prior preservation on class
images the base model drew (lienzo.recipes.class_images makes them); the result is a model."""

from __future__ import annotations

from dataclasses import dataclass, replace
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
from lienzo.training.prior_preservation import PriorPreservationDataset, PriorPreservationObjective


@dataclass(frozen=True)
class DreamBoothConfig:
    """A DreamBooth run: images without a caption file are captioned `instance_prompt` (a caption file wins,
    as in kohya's DreamBooth folders); with class images their loss is added at `prior_loss_weight`;
    `finetune` says what is trained and kept (text encoder, EMA, save precision)."""

    instance_prompt: str
    prior_loss_weight: float = 1.0
    finetune: FinetuneConfig = FinetuneConfig()

    def __post_init__(self) -> None:
        if not self.instance_prompt.strip():
            raise InvalidArgumentError("--instance-prompt is empty; describe the instance, e.g. 'a star'")
        if self.prior_loss_weight < 0:
            raise InvalidArgumentError(f"--prior-loss-weight must be 0 or more, got {self.prior_loss_weight}")


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


def dreambooth_dataset(
    options: RunOptions, config: DreamBoothConfig, model: Any, class_folder: Path | None, run_folder: Path
) -> CaptionedDataset | PriorPreservationDataset:
    """The instance items, paired with the class folder's items (its `.txt` prompts) under prior
    preservation; both VAE-encoded once into the run folder with `cache_latents`."""
    data = options.data
    instances = CaptionedDataset(data, options.batch_size, instance_examples(data, config.instance_prompt))
    datasets = [instances]
    if class_folder is not None:
        class_data = replace(
            data, folder=Path(class_folder), repeats=1, shuffle_tags=False, seed=data.seed + 1
        )
        datasets.append(CaptionedDataset(class_data, options.batch_size))
    if options.cache_latents:
        for dataset in datasets:
            cache_latents(dataset, model.vae, run_folder / CACHE_FOLDER)
    return instances if class_folder is None else PriorPreservationDataset(*datasets)


def train_dreambooth(
    options: RunOptions,
    config: DreamBoothConfig,
    model: Any,
    out: str | Path,
    *,
    class_folder: str | Path | None = None,
    resume: bool = False,
    sample_fn: SampleFn | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """Fine-tune `model` (loaded in float32) on the instance images, plus `prior_loss_weight` times the loss
    of `class_folder`'s images when given, and write the model to `out` (diffusers folder, or `.safetensors`);
    state, loss log and samples go to `model_run_folder(out)`."""
    out = Path(out)
    check_trainable_family(model.spec, "DreamBooth")
    check_model_output(out, resume)
    prior = class_folder is not None and config.prior_loss_weight > 0
    dataset = dreambooth_dataset(
        options, config, model, Path(class_folder) if prior else None, model_run_folder(out)
    )
    model.unet.requires_grad_(True).train()
    base = diffusion_objective(
        options,
        model,
        dataset.instances if prior else dataset,
        train_text_encoder=config.finetune.train_text_encoder,
    )
    objective = PriorPreservationObjective(base, config.prior_loss_weight if prior else 0.0)
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
