"""The arguments every `lienzo train <method>` shares (data, model, length, rates, intervals, samples), and
how a method command turns them into RunOptions and reports a full disk."""

from __future__ import annotations

import argparse
import errno
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.pipeline import Pipeline
from lienzo.recipes.fine_tuning import load_for_training
from lienzo.training.captioned_dataset import DataConfig
from lienzo.training.method_run import RunOptions, is_main_process, training_device


@dataclass(frozen=True)
class MethodDefaults:
    """A method's default length, batch size, learning rate and resolution (None: the model's)."""

    steps: int
    batch_size: int
    learning_rate: float
    save_every: int = 100
    sample_every: int = 0


def add_training_arguments(parser: argparse.ArgumentParser, defaults: MethodDefaults) -> None:
    """The shared options of a fine-tuning command."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True, help="images with same-name .txt captions")
    data.add_argument("--resolution", type=int, help="training size in pixels (default: the model's)")
    data.add_argument("--repeats", type=int, default=1, help="times an image counts per epoch")
    data.add_argument("--caption-dropout", type=float, default=0.0, help="share of captions replaced by ''")
    data.add_argument("--shuffle-tags", action="store_true", help="shuffle the comma-separated tags")
    data.add_argument("--keep-tokens", type=int, default=0, help="leading tags kept in place when shuffling")
    data.add_argument("--buckets", action="store_true", help="aspect-ratio buckets (mixed sizes)")
    data.add_argument("--cache-latents", action="store_true", help="encode each image once (disk cache)")
    run = parser.add_argument_group("run")
    run.add_argument("--model", help="model to fine-tune: a path or a checkpoint name (default: built-in)")
    run.add_argument("--steps", type=int, default=defaults.steps, help=f"optimizer steps ({defaults.steps})")
    run.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step")
    run.add_argument(
        "--learning-rate", type=float, default=defaults.learning_rate, help=f"({defaults.learning_rate:g})"
    )
    run.add_argument("--unet-lr", type=float, help="UNet learning rate (default: --learning-rate)")
    run.add_argument("--text-encoder-lr", type=float, help="text-encoder learning rate; 0 or unset: frozen")
    run.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~30%% more time")
    run.add_argument("--seed", type=int, default=0, help="seed of the data order, noise and samples")
    run.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU when there is one)")
    run.add_argument("--resume", action="store_true", help="continue the run saved beside --out")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    out = parser.add_argument_group("saving and samples")
    out.add_argument("--save-every", type=int, default=defaults.save_every, help="steps between saved states")
    out.add_argument(
        "--sample-every", type=int, default=defaults.sample_every, help="steps between sample grids (0: none)"
    )
    out.add_argument(
        "--sample-prompt", action="append", default=[], help="prompt drawn in the sample grids (repeatable)"
    )


def run_options(args: argparse.Namespace, resolution: int) -> RunOptions:
    """RunOptions from the shared arguments; `resolution` is the model's, used when --resolution is unset."""
    data = DataConfig(
        folder=args.data,
        resolution=args.resolution or resolution,
        repeats=args.repeats,
        shuffle_tags=args.shuffle_tags,
        keep_tokens=args.keep_tokens,
        buckets=args.buckets,
        seed=args.seed,
    )
    sample_every = args.sample_every if args.sample_prompt else 0
    if args.sample_every and not args.sample_prompt:
        raise InvalidArgumentError("--sample-every needs at least one --sample-prompt to draw")
    return RunOptions(
        data=data,
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        unet_lr=args.unet_lr,
        text_encoder_lr=args.text_encoder_lr,
        caption_dropout=args.caption_dropout,
        cache_latents=args.cache_latents,
        gradient_checkpointing=args.gradient_checkpointing,
        save_every=args.save_every,
        sample_every=sample_every,
        sample_prompts=tuple(args.sample_prompt),
        seed=args.seed,
        progress=not args.quiet,
        device=args.device,
    )


def options_and_model(args: argparse.Namespace, method: str) -> tuple[RunOptions, Pipeline]:
    """The model loaded for training (refused when `method` cannot train its family) and the run options,
    --resolution defaulting to the model's."""
    pipe = load_for_training(args.model, training_device(args.device), method)
    return run_options(args, pipe.spec.resolution), pipe


def run_method(
    args: argparse.Namespace,
    method: str,
    output: str,
    train: Callable[[RunOptions, Pipeline], object],
    *,
    hint: str = "",
) -> int:
    """Load the model for `method`, run `train(options, pipe)` with a full disk reported as such, and say
    (on the main process) where the `output` went, how long it took, and `hint`."""
    started = time.perf_counter()
    with disk_errors(args.out):
        options, pipe = options_and_model(args, method)
        train(options, pipe)
    if is_main_process():
        print(f"{output} written to {args.out} in {time.perf_counter() - started:.0f} s{hint}")
    return 0


@contextmanager
def disk_errors(out: Path) -> Iterator[None]:
    """A full disk (or quota) becomes an error that says the last saved state is intact and how to go on."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise InvalidArgumentError(
            f"the disk is full while writing {error.filename or out}; the last saved training state is "
            "intact: free some space and run the same command with --resume"
        ) from error


def check_new_output(out: Path, resume: bool) -> None:
    """Refuse to overwrite an existing output unless resuming the run that writes it."""
    if out.exists() and not resume:
        raise InvalidArgumentError(f"{out} already exists; choose another --out, remove it, or add --resume")
