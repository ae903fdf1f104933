"""`lienzo train finetune`: the whole UNet (optionally the text encoder too) fine-tuned, saved as a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.cli.train_arguments import (
    MethodDefaults,
    add_training_arguments,
    run_method,
)
from lienzo.recipes.fine_tuning import sample_writer
from lienzo.training.finetune import SAVE_PRECISIONS, FinetuneConfig, check_model_output, train_finetune

FINETUNE_DEFAULTS = MethodDefaults(steps=500, batch_size=8, learning_rate=5e-5)
DEFAULT_EMA_DECAY = 0.999

FINETUNE_EPILOG = """examples:
  lienzo train finetune --data shapes/ --out models/checkpoints/tuned
  lienzo train finetune --data shapes/ --ema --ema-decay 0.995 --out tuned.safetensors
  lienzo train finetune --data shapes/ --train-text-encoder --text-encoder-lr 1e-5 --out tuned

OUT is a diffusers folder, or one file when it ends in .safetensors; with --ema the averaged weights are
written. The run's state, loss.csv, loss.png and samples/ go to OUT-training/ beside it.
"""


def add_model_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--out and what a full fine-tune trains and keeps (shared with DreamBooth)."""
    parser.add_argument(
        "--out", type=Path, required=True, help="the model to write: a folder, or FILE.safetensors"
    )
    kept = parser.add_argument_group("model")
    kept.add_argument(
        "--train-text-encoder", action="store_true", help="train the text encoder too (at --text-encoder-lr)"
    )
    kept.add_argument("--ema", action="store_true", help="keep an EMA of the weights and write it")
    kept.add_argument(
        "--ema-decay", type=float, default=DEFAULT_EMA_DECAY, help=f"EMA decay ({DEFAULT_EMA_DECAY})"
    )
    kept.add_argument(
        "--save-precision", choices=sorted(SAVE_PRECISIONS), default="fp16", help="weights' dtype (fp16)"
    )


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    """What is trained and kept, from the arguments; a --text-encoder-lr above 0 trains the text encoder."""
    return FinetuneConfig(
        train_text_encoder=args.train_text_encoder or bool(args.text_encoder_lr),
        ema_decay=args.ema_decay if args.ema else None,
        save_precision=args.save_precision,
    )


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo train finetune`."""
    add_model_output_arguments(parser)
    add_training_arguments(parser, FINETUNE_DEFAULTS)


def run_train_finetune(args: argparse.Namespace) -> int:
    """Train, write the model, say where it went and how long it took."""
    check_model_output(args.out, args.resume)
    config = finetune_config(args)

    def train(options, pipe):
        train_finetune(
            options,
            config,
            pipe,
            args.out,
            resume=args.resume,
            sample_fn=sample_writer(pipe, options),
            device=pipe.device,
        )

    return run_method(args, "full fine-tuning", "model", train)
