"""`lienzo train lora`: a LoRA / LyCORIS network trained on a captioned folder, saved in kohya's layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.cli.prior_arguments import PRIOR_HELP, add_prior_arguments, prior_preservation
from lienzo.cli.train_arguments import (
    MethodDefaults,
    add_training_arguments,
    check_new_output,
    run_method,
)
from lienzo.recipes.class_images import draw_class_images
from lienzo.recipes.fine_tuning import sample_writer
from lienzo.training.lora import train_lora
from lienzo.training.lora_network import NETWORKS, NetworkConfig
from lienzo.training.method_run import check_output_file

LORA_DEFAULTS = MethodDefaults(steps=300, batch_size=8, learning_rate=1e-3)
DEFAULT_RANK = 8

LORA_EPILOG = f"""examples:
  lienzo train lora --data stars/ --out models/loras/star.safetensors
  lienzo train lora --data stars/ --out star.safetensors --resume        # continue a stopped run
  lienzo train lora --data stars/ --out star.safetensors --class-prompt @base-prompts.txt
  lienzo train lora --data photos/ --model sd15.safetensors --network locon --rank 16 --alpha 8 \\
      --unet-lr 1e-4 --text-encoder-lr 5e-5 --buckets --cache-latents --out style.safetensors

The run's state, loss.csv, loss.png and samples/ go to OUT-training/ beside the file. Use the file as
<lora:NAME:1> in a prompt, with the file in models/loras/ (or in the folder --lora-dir names).

{PRIOR_HELP}
"""


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo train lora`."""
    parser.add_argument("--out", type=Path, required=True, help="the LoRA file to write (.safetensors)")
    network = parser.add_argument_group("network")
    network.add_argument("--network", choices=NETWORKS, default="lora", help="algorithm (lora)")
    network.add_argument("--rank", type=int, default=DEFAULT_RANK, help=f"rank / dim ({DEFAULT_RANK})")
    network.add_argument("--alpha", type=float, help="delta scaled by alpha/rank (default: rank)")
    add_prior_arguments(parser)
    add_training_arguments(parser, LORA_DEFAULTS)


def run_train_lora(args: argparse.Namespace) -> int:
    """Train, write the file, say where it went and how long it took."""
    check_output_file(args.out, (".safetensors",))
    check_new_output(args.out, args.resume)
    config = NetworkConfig(args.network, args.rank, args.alpha)
    prior = prior_preservation(args)

    def train(options, pipe):
        train_lora(
            options,
            config,
            pipe,
            args.out,
            classes=draw_class_images(pipe, prior, options.data.resolution, options.progress),
            resume=args.resume,
            sample_fn=sample_writer(pipe, options),
            device=pipe.device,
        )

    return run_method(args, "LoRA", "LoRA", train)
