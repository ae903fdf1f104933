"""DreamBooth end to end: the base model draws the class images (cached), then the model is fine-tuned on
the instance images with prior preservation (lienzo.training.dreambooth)."""

from __future__ import annotations

from pathlib import Path

import torch

from lienzo.pipelines.pipeline import Pipeline
from lienzo.recipes.class_images import PriorPreservation, draw_class_images
from lienzo.training.dreambooth import DreamBoothConfig, train_dreambooth
from lienzo.training.loop import SampleFn
from lienzo.training.method_run import RunOptions


def run_dreambooth(
    options: RunOptions,
    config: DreamBoothConfig,
    pipe: Pipeline,
    out: str | Path,
    *,
    prior: PriorPreservation | None = None,
    resume: bool = False,
    sample_fn: SampleFn | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """DreamBooth on `pipe` (loaded for training): with an active `prior` (None: off) the base model first
    draws the class images at the training resolution (lienzo.recipes.class_images.draw_class_images,
    cached), then trains with prior preservation; without, plain DreamBooth."""
    classes = prior and draw_class_images(pipe, prior, options.data.resolution, options.progress)
    return train_dreambooth(
        options, config, pipe, out, classes=classes, resume=resume, sample_fn=sample_fn, device=device
    )
