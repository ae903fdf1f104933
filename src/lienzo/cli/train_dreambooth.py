"""`lienzo train dreambooth`: full fine-tune on instance images with prior preservation, saved as a model."""

from __future__ import annotations

import argparse

from lienzo.cli.prior_arguments import PRIOR_HELP, add_prior_arguments, prior_preservation
from lienzo.cli.train_arguments import (
    MethodDefaults,
    add_training_arguments,
    run_method,
)
from lienzo.cli.train_finetune import add_model_output_arguments, finetune_config
from lienzo.recipes.dreambooth import run_dreambooth
from lienzo.recipes.fine_tuning import sample_writer
from lienzo.training.dreambooth import DreamBoothConfig
from lienzo.training.finetune import check_model_output

DREAMBOOTH_DEFAULTS = MethodDefaults(steps=400, batch_size=8, learning_rate=1e-4)

DREAMBOOTH_EPILOG = f"""examples:
  lienzo train dreambooth --data stars/ --instance-prompt "a star" --out models/checkpoints/star-model
  lienzo train dreambooth --data stars/ --instance-prompt "a star" --class-prompt "a shape" \\
      --class-images 200 --prior-loss-weight 1 --out star.safetensors
  lienzo train dreambooth --data stars/ --instance-prompt "a star" --class-prompt @prompts.txt --out m

Images without a caption file are captioned with --instance-prompt. OUT is a diffusers folder, or one file
when it ends in .safetensors; the run's state, loss.csv, loss.png and samples/ go to OUT-training/ beside
it.

{PRIOR_HELP}
"""


def add_dreambooth_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo train dreambooth`."""
    add_model_output_arguments(parser)
    method = parser.add_argument_group("dreambooth")
    method.add_argument("--instance-prompt", required=True, help="caption of images without a .txt file")
    add_prior_arguments(parser)
    add_training_arguments(parser, DREAMBOOTH_DEFAULTS)


def run_train_dreambooth(args: argparse.Namespace) -> int:
    """Draw or reuse the class images, train, write the model, say where it went and how long it took."""
    check_model_output(args.out, args.resume)
    prior = prior_preservation(args)
    config = DreamBoothConfig(args.instance_prompt, finetune_config(args))

    def train(options, pipe):
        run_dreambooth(
            options,
            config,
            pipe,
            args.out,
            prior=prior,
            resume=args.resume,
            sample_fn=sample_writer(pipe, options),
            device=pipe.device,
        )

    return run_method(args, "DreamBooth", "model", train)
