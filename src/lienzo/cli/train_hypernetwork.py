"""`lienzo train hypernetwork`: A1111 hypernetworks trained on a captioned folder, written as A1111 `.pt`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.adapters.hypernetwork import ACTIVATIONS
from lienzo.cli.prior_arguments import PRIOR_HELP, add_prior_arguments, prior_preservation
from lienzo.cli.train_arguments import (
    MethodDefaults,
    add_training_arguments,
    check_new_output,
    run_method,
)
from lienzo.errors import InvalidArgumentError
from lienzo.io.hypernetwork_writer import WEIGHT_INITIALIZATIONS, HypernetworkSettings
from lienzo.recipes.class_images import draw_class_images
from lienzo.recipes.fine_tuning import sample_writer
from lienzo.training.hypernetwork_training import HypernetworkConfig, train_hypernetwork
from lienzo.training.method_run import check_output_file

HYPERNETWORK_DEFAULTS = MethodDefaults(steps=300, batch_size=8, learning_rate=3e-4)

HYPERNETWORK_EPILOG = f"""examples:
  lienzo train hypernetwork --data stars/ --out models/hypernetworks/star.pt
  lienzo train hypernetwork --data art/ --model sd15.safetensors --layer-structure 1,2,2,1 \\
      --activation relu --layer-norm --dropout --out art.pt

Networks are made for every width the model's attention layers read (SD 1.x: 768, 320, 640, 1280), or
--widths. Use the file as <hypernet:NAME:1> in a prompt (with the file in models/hypernetworks), in lienzo
or A1111. The run's state, loss.csv, loss.png and samples/ go to OUT-training/ beside the file.

{PRIOR_HELP}
"""


def numbers(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers ("1,2,1")."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers, e.g. 1,2,1") from None


def add_hypernetwork_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo train hypernetwork`."""
    parser.add_argument("--out", type=Path, required=True, help="the hypernetwork file to write (.pt)")
    network = parser.add_argument_group("hypernetwork (A1111's settings)")
    network.add_argument(
        "--layer-structure", type=numbers, default=(1.0, 2.0, 1.0), help="width multipliers (1,2,1)"
    )
    network.add_argument(
        "--activation", choices=sorted(ACTIVATIONS), default="linear", help="activation function (linear)"
    )
    network.add_argument("--layer-norm", action="store_true", help="a LayerNorm after each layer")
    network.add_argument("--dropout", action="store_true", help="dropout 0.3 after the hidden layers")
    network.add_argument(
        "--no-last-layer-dropout", action="store_true", help="no dropout after the last hidden layer"
    )
    network.add_argument("--activate-output", action="store_true", help="the activation after the output too")
    network.add_argument(
        "--weight-init", choices=WEIGHT_INITIALIZATIONS, default="Normal", help="initialization (Normal)"
    )
    network.add_argument("--widths", type=numbers, help="attention widths to train (default: all)")
    add_prior_arguments(parser)
    add_training_arguments(parser, HYPERNETWORK_DEFAULTS)


def hypernetwork_config(args: argparse.Namespace) -> HypernetworkConfig:
    """The networks' settings and widths from the arguments."""
    widths = None
    if args.widths:
        if not all(width.is_integer() and width > 0 for width in args.widths):
            raise InvalidArgumentError("--widths takes whole numbers, e.g. 768,320")
        widths = tuple(int(width) for width in args.widths)
    settings = HypernetworkSettings(
        layer_structure=args.layer_structure,
        activation=args.activation,
        layer_norm=args.layer_norm,
        weight_initialization=args.weight_init,
        activate_output=args.activate_output,
        use_dropout=args.dropout,
        last_layer_dropout=not args.no_last_layer_dropout,
    )
    return HypernetworkConfig(settings, widths)


def run_train_hypernetwork(args: argparse.Namespace) -> int:
    """Train, write the file, say where it went and how long it took."""
    check_output_file(args.out, (".pt",))
    check_new_output(args.out, args.resume)
    config = hypernetwork_config(args)
    prior = prior_preservation(args)

    def train(options, pipe):
        train_hypernetwork(
            options,
            config,
            pipe,
            args.out,
            classes=draw_class_images(pipe, prior, options.data.resolution, options.progress),
            resume=args.resume,
            sample_fn=sample_writer(pipe, options),
            device=pipe.device,
        )

    return run_method(args, "hypernetwork", "hypernetwork", train)
