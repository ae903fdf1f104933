"""Fine-tuning runs end to end: load the model for training, draw sample grids while it trains, call the
method (lienzo.training.lora, textual_inversion, ...) and report where the file went."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lienzo.io.atomic import atomic_path
from lienzo.io.library import library_from_config
from lienzo.pipelines.output import write_png_atomically
from lienzo.pipelines.pipeline import Pipeline, load
from lienzo.training.method_run import RunOptions, check_trainable_family
from lienzo.worlds.concept_data import concept_scenes
from lienzo.worlds.shapes import SIZES, caption, render

SampleFn = Callable[[int, Path], None]


def load_for_training(model: str | Path | None, device: torch.device, method: str) -> Pipeline:
    """The model (a path or checkpoint name; None: the built-in one) in float32 on `device`, with networks
    of its own (never a cached copy another Pipeline shares), frozen; a family `method` cannot train is
    refused."""
    path = library_from_config(allow_paths=True).resolve("checkpoints", model) if model else None
    pipe = load(path, device=device, dtype=torch.float32, cache=False)
    check_trainable_family(pipe.spec, method)
    return pipe


def image_grid(images: list[Image.Image], columns: int = 4) -> Image.Image:
    """Images tiled left to right, top to bottom."""
    width, height = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (width * min(columns, len(images)), height * rows), "white")
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid


def sample_writer(pipe: Pipeline, options: RunOptions) -> SampleFn | None:
    """`sample_fn(step, folder)` for the loop: each sample prompt drawn (seed, seed + 1, ...) with the
    adapter as trained so far, tiled into `folder/step_NNNNNN.png`; None without sample prompts."""
    if not options.sample_prompts:
        return None

    def sample_fn(step: int, folder: Path) -> None:
        with torch.no_grad():
            images = [
                pipe.generate(prompt, seed=options.seed + k, steps=options.sample_steps, progress=False)[0]
                for k, prompt in enumerate(options.sample_prompts)
            ]
        folder.mkdir(parents=True, exist_ok=True)
        write_png_atomically(image_grid(images), folder / f"step_{step:06d}.png")

    return sample_fn


def write_concept_folder(
    folder: str | Path, shape: str, count: int, seed: int = 0, sizes: tuple[str, ...] = tuple(SIZES)
) -> Path:
    """A training folder of `count` one-object scenes of a reserved shape in `sizes`: `NNNN.png` with a
    `NNNN.txt` caption each (sizes and positions left out of a caption with the world's probabilities)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    for index, scene in enumerate(concept_scenes(shape, count, seed, sizes)):
        write_png_atomically(render(scene), folder / f"{index:04d}.png")
        with atomic_path(folder / f"{index:04d}.txt") as temporary:
            temporary.write_text(caption(scene, rng) + "\n", encoding="utf-8")
    return folder
