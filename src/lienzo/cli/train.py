"""`lienzo train recipe shapes`: reproduce the built-in model from nothing with lienzo's training loop."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from lienzo.pipelines.output import check_writable_folder
from lienzo.recipes import ShapesRecipe, run_recipe

TRAIN_EPILOG = """examples:
  lienzo train recipe shapes --out runs/shapes            # the built-in model, ~1 h 20 min on 2 CPU cores
  lienzo train recipe shapes --out runs/shapes --resume   # continue a stopped run where it left off
  lienzo train recipe shapes --out /tmp/mini --miniature  # every stage at toy sizes, in seconds

The model lands in OUT/model (a diffusers folder); try it with
  lienzo generate "a red circle on a blue background" --model OUT/model
  lienzo eval shapes --model OUT/model
"""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo train recipe shapes`."""
    parser.add_argument("kind", choices=["recipe"], help="what to train: a whole recipe")
    parser.add_argument("recipe", choices=["shapes"], help="the recipe: shapes = the built-in model")
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder: checkpoints, logs, samples, model"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run already in --out")
    parser.add_argument("--miniature", action="store_true", help="toy sizes and a few steps (a smoke test)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def first_missing_folder(folder: Path) -> Path | None:
    """The outermost folder that making `folder` would create (None when it exists)."""
    outermost = None
    while not folder.exists() and folder != folder.parent:
        outermost, folder = folder, folder.parent
    return outermost


def remove_if_empty(folder: Path) -> None:
    """Remove `folder` and its subfolders when they hold no file at all."""
    if not folder.is_dir() or any(not path.is_dir() for path in folder.rglob("*")):
        return
    for parent, _, _ in os.walk(folder, topdown=False):
        os.rmdir(parent)


def run_train(args: argparse.Namespace) -> int:
    """Run the recipe and print where the model was written and how long it took."""
    check_writable_folder(args.out, "--out")
    created = first_missing_folder(args.out)
    recipe = ShapesRecipe.miniature() if args.miniature else ShapesRecipe()
    started = time.perf_counter()
    try:
        model = run_recipe(args.out, recipe, resume=args.resume, progress=not args.quiet)
    except BaseException:
        if created is not None:
            remove_if_empty(created)
        raise
    print(f"model written to {model} in {time.perf_counter() - started:.0f} s")
    return 0
