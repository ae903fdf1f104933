"""`lienzo train dreambooth`: full fine-tune on instance images with prior preservation, saved as a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.cli.train_arguments import (
    MethodDefaults,
    add_training_arguments,
    run_method,
)
from lienzo.cli.train_finetune import add_model_output_arguments, finetune_config
from lienzo.errors import InvalidArgumentError
from lienzo.recipes.class_images import default_class_cache
from lienzo.recipes.dreambooth import run_dreambooth
from lienzo.recipes.fine_tuning import sample_writer
from lienzo.training.dreambooth import DreamBoothConfig
from lienzo.training.finetune import check_model_output

DREAMBOOTH_DEFAULTS = MethodDefaults(steps=400, batch_size=8, learning_rate=1e-4)
DEFAULT_CLASS_IMAGES = 100

DREAMBOOTH_EPILOG = """examples:
  lienzo train dreambooth --data stars/ --instance-prompt "a star" --out models/checkpoints/star-model
  lienzo train dreambooth --data stars/ --instance-prompt "a star" --class-prompt "a shape" \\
      --class-images 200 --prior-loss-weight 1 --out star.safetensors
  lienzo train dreambooth --data stars/ --instance-prompt "a star" --class-prompt @prompts.txt --out m

Images without a caption file are captioned with --instance-prompt. With --class-prompt (repeatable, or
@FILE with one prompt a line, taken in turn) the base model first draws --class-images images (seeds 0,
1, ...), cached under --class-cache by model, prompts, count and size, and their loss is added at
--prior-loss-weight. OUT is a diffusers folder, or one file when it ends in .safetensors; the run's state,
loss.csv, loss.png and samples/ go to OUT-training/ beside it.
"""


def add_dreambooth_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo train dreambooth`."""
    add_model_output_arguments(parser)
    method = parser.add_argument_group("dreambooth")
    method.add_argument("--instance-prompt", required=True, help="caption of images without a .txt file")
    method.add_argument(
        "--class-prompt",
        action="append",
        default=[],
        help="prompt of the class images (repeatable, or @FILE: one prompt a line); none: no prior loss",
    )
    method.add_argument(
        "--class-images", type=int, default=DEFAULT_CLASS_IMAGES, help="class images to draw (100)"
    )
    method.add_argument("--prior-loss-weight", type=float, default=1.0, help="weight of the class loss (1)")
    method.add_argument(
        "--class-steps", type=int, help="sampling steps of the class images (default: the model's)"
    )
    method.add_argument(
        "--class-cache", type=Path, help=f"folder of cached class images ({default_class_cache()})"
    )
    add_training_arguments(parser, DREAMBOOTH_DEFAULTS)


def class_prompts(values: list[str]) -> list[str]:
    """The --class-prompt values, each `@FILE` replaced by the file's non-empty lines."""
    prompts = []
    for value in values:
        if not value.startswith("@"):
            prompts.append(value)
            continue
        path = Path(value[1:])
        if not path.is_file():
            raise InvalidArgumentError(f"--class-prompt {value}: no file {path}; give a file of prompts")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise InvalidArgumentError(f"--class-prompt {value}: {path} holds no prompt")
        prompts.extend(lines)
    return prompts


def run_train_dreambooth(args: argparse.Namespace) -> int:
    """Draw or reuse the class images, train, write the model, say where it went and how long it took."""
    check_model_output(args.out, args.resume)
    prompts = class_prompts(args.class_prompt)
    config = DreamBoothConfig(args.instance_prompt, args.prior_loss_weight, finetune_config(args))

    def train(options, pipe):
        run_dreambooth(
            options,
            config,
            pipe,
            args.out,
            class_prompts=prompts,
            class_image_count=args.class_images,
            class_cache=args.class_cache,
            class_steps=args.class_steps,
            resume=args.resume,
            sample_fn=sample_writer(pipe, options),
            device=pipe.device,
        )

    return run_method(args, "DreamBooth", "model", train)
