"""`lienzo train`: one subcommand per training method, each in its own module (`cli/train_<method>.py`)
over the shared arguments of `cli/train_arguments.py`; `recipe shapes` reproduces the built-in model."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lienzo.cli.train_controlnet import CONTROLNET_EPILOG, add_controlnet_arguments, run_train_controlnet
from lienzo.cli.train_dreambooth import DREAMBOOTH_EPILOG, add_dreambooth_arguments, run_train_dreambooth
from lienzo.cli.train_finetune import FINETUNE_EPILOG, add_finetune_arguments, run_train_finetune
from lienzo.cli.train_hypernetwork import (
    HYPERNETWORK_EPILOG,
    add_hypernetwork_arguments,
    run_train_hypernetwork,
)
from lienzo.cli.train_lora import LORA_EPILOG, add_lora_arguments, run_train_lora
from lienzo.cli.train_textual_inversion import EMBEDDING_EPILOG, add_embedding_arguments, run_train_embedding
from lienzo.errors import InvalidArgumentError
from lienzo.io.library import BUILTIN_NAME
from lienzo.pipelines.output import check_writable_folder
from lienzo.recipes import RECIPES, run_recipe

TRAIN_EPILOG = """methods:
  recipe shapes        the built-in model (shapes-v2) from nothing; recipe shapes-v1: its predecessor
  lora                 a LoRA / LyCORIS network (kohya layout)
  textual-inversion    new token vectors (A1111 embedding)
  dreambooth           the whole UNet on a concept, with prior preservation (a model)
  hypernetwork         A1111 hypernetwork (.pt)
  finetune             the whole UNet, optionally the text encoder and EMA (a model)
  controlnet           a ControlNet for the model (diffusers folder)

Run `lienzo train METHOD --help` for a method's options.
"""

RECIPE_EPILOG = """examples:
  lienzo train recipe shapes --out runs/shapes            # the built-in model, ~2 h on 2 CPU cores
  lienzo train recipe shapes --out runs/shapes --resume   # continue a stopped run where it left off
  lienzo train recipe shapes --out /tmp/mini --miniature  # every stage at toy sizes, in seconds
  lienzo train recipe shapes --out runs/codec --generalise-decoder 300  # + decoder on generic shapes
  lienzo train recipe shapes-v1 --out runs/v1             # the 4-channel predecessor, ~1 h 20 min

The model lands in OUT/model (a diffusers folder); try it with
  lienzo generate "a red circle on a blue background" --model OUT/model
  lienzo eval shapes --model OUT/model
"""


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo train recipe shapes`."""
    parser.add_argument(
        "recipe",
        choices=["shapes", *RECIPES],
        help=f"the recipe: shapes = {BUILTIN_NAME}, the built-in model; shapes-v1 = its 4-channel forerunner",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder: checkpoints, logs, samples, model"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run already in --out")
    parser.add_argument("--miniature", action="store_true", help="toy sizes and a few steps (a smoke test)")
    parser.add_argument(
        "--generalise-decoder",
        type=int,
        default=0,
        metavar="STEPS",
        help="add the decoder generalisation stage (generic shapes) for STEPS; default 0: off, as in both",
    )
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


def run_train_recipe(args: argparse.Namespace) -> int:
    """Run the recipe and print where the model was written and how long it took."""
    check_writable_folder(args.out, "--out")
    created = first_missing_folder(args.out)
    name = BUILTIN_NAME if args.recipe == "shapes" else args.recipe
    recipe = RECIPES[name]
    if args.miniature:
        recipe = recipe.in_miniature()
    if args.generalise_decoder < 0:
        raise InvalidArgumentError(
            f"--generalise-decoder takes a number of steps (0 = off), got {args.generalise_decoder}"
        )
    if args.generalise_decoder:
        recipe = recipe.with_decoder_generalisation(args.generalise_decoder)
    started = time.perf_counter()
    try:
        model = run_recipe(args.out, recipe, resume=args.resume, progress=not args.quiet)
    except BaseException:
        if created is not None:
            remove_if_empty(created)
        raise
    print(f"model written to {model} in {time.perf_counter() - started:.0f} s")
    return 0


@dataclass(frozen=True)
class TrainMethod:
    """A `lienzo train` subcommand: its name, one-line help, arguments, runner and examples."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str = ""


METHODS = [
    TrainMethod(
        "recipe", "train a whole model with a recipe", add_recipe_arguments, run_train_recipe, RECIPE_EPILOG
    ),
    TrainMethod("lora", "train a LoRA / LyCORIS network", add_lora_arguments, run_train_lora, LORA_EPILOG),
    TrainMethod(
        "textual-inversion",
        "train a textual-inversion embedding",
        add_embedding_arguments,
        run_train_embedding,
        EMBEDDING_EPILOG,
    ),
    TrainMethod(
        "dreambooth",
        "fine-tune the model on a concept with prior preservation",
        add_dreambooth_arguments,
        run_train_dreambooth,
        DREAMBOOTH_EPILOG,
    ),
    TrainMethod(
        "hypernetwork",
        "train an A1111 hypernetwork",
        add_hypernetwork_arguments,
        run_train_hypernetwork,
        HYPERNETWORK_EPILOG,
    ),
    TrainMethod(
        "finetune",
        "fine-tune the whole model (optionally with EMA)",
        add_finetune_arguments,
        run_train_finetune,
        FINETUNE_EPILOG,
    ),
    TrainMethod(
        "controlnet",
        "train a ControlNet on images and their control images",
        add_controlnet_arguments,
        run_train_controlnet,
        CONTROLNET_EPILOG,
    ),
]


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One subcommand per training method."""
    methods = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    for method in METHODS:
        sub = methods.add_parser(
            method.name,
            help=method.help,
            description=method.help,
            epilog=method.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        method.add_arguments(sub)
        sub.set_defaults(run_method=method.run)


def run_train(args: argparse.Namespace) -> int:
    """Run the chosen method."""
    return args.run_method(args)
