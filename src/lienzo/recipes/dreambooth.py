"""DreamBooth end to end: the base model draws the class images (cached), then the model is fine-tuned on
the instance images with prior preservation (lienzo.training.dreambooth)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from lienzo.io.model_hash import model_identity
from lienzo.pipelines.pipeline import Pipeline, load
from lienzo.recipes.class_images import (
    class_image_folder,
    class_images,
    default_class_cache,
    wait_for_class_images,
)
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
    class_steps: int | None = None,
    resume: bool = False,
    sample_fn: SampleFn | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """DreamBooth on `pipe` (loaded for training): with `class_prompts` (taken in turn) the base model first
    draws `class_image_count` class images at the training resolution into the cache (reused when the model,
    prompts, count, size and `class_steps` match), then trains with prior preservation; without, plain
    DreamBooth. The class images are drawn by the model loaded afresh in its default generation dtype (bf16
    or fp16 where the device has it), as `lienzo generate` draws; under torchrun rank 0 draws them and the
    other ranks wait for the finished folder."""
    folder = None
    if class_prompts and config.prior_loss_weight > 0:
        identity = model_identity(pipe.path)
        size, cache = options.data.resolution, class_cache or default_class_cache()
        if int(os.environ.get("RANK", "0")) == 0:
            drawer = load(pipe.path, device=pipe.device, family=pipe.family, cache=False)
            folder = class_images(
                drawer,
                identity,
                list(class_prompts),
                class_image_count,
                size,
                cache,
                steps=class_steps,
                progress=options.progress,
            )
            del drawer
        else:
            count = class_image_count
            expected = class_image_folder(identity, class_prompts, count, size, cache, class_steps)
            folder = wait_for_class_images(expected, count)
    return train_dreambooth(
        options, config, pipe, out, class_folder=folder, resume=resume, sample_fn=sample_fn, device=device
    )
