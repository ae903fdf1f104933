"""DreamBooth end to end: the base model draws the class images (cached), then the model is fine-tuned on
the instance images with prior preservation (lienzo.training.dreambooth)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lienzo.io.model_hash import model_identity
from lienzo.pipelines.pipeline import Pipeline
from lienzo.recipes.class_images import class_images, default_class_cache
from lienzo.training.dreambooth import DreamBoothConfig, train_dreambooth
from lienzo.training.loop import SampleFn
from lienzo.training.method_run import RunOptions


def run_dreambooth(
    options: RunOptions,
    config: DreamBoothConfig,
    pipe: Pipeline,
    out: str | Path,
    *,
    class_prompts: Sequence[str] = (),
    class_image_count: int = 100,
    class_cache: Path | None = None,
    resume: bool = False,
    sample_fn: SampleFn | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """DreamBooth on `pipe` (loaded for training): with `class_prompts` (taken in turn) the base model first
    draws `class_image_count` class images at the training resolution into the cache (reused when the model,
    prompts, count and size match), then trains with prior preservation; without, plain DreamBooth."""
    folder = None
    if class_prompts and config.prior_loss_weight > 0:
        folder = class_images(
            pipe,
            model_identity(pipe.path),
            list(class_prompts),
            class_image_count,
            options.data.resolution,
            class_cache or default_class_cache(),
            progress=options.progress,
        )
    return train_dreambooth(
        options, config, pipe, out, class_folder=folder, resume=resume, sample_fn=sample_fn, device=device
    )
