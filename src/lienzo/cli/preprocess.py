"""`lienzo preprocess KIND IN OUT`: one ControlNet preprocessor on one image, written as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.cli.arguments import library_from_args
from lienzo.errors import InvalidArgumentError
from lienzo.io.atomic import atomic_path
from lienzo.pipelines.images import load_image
from lienzo.pipelines.preprocessors import (
    CANNY_HIGH,
    CANNY_LOW,
    PREPROCESSORS,
    SCRIBBLE_THRESHOLD,
    preprocess,
)

PREPROCESS_EPILOG = """examples:
  lienzo preprocess canny photo.png edges.png --low-threshold 50 --high-threshold 150
  lienzo preprocess scribble drawing.png strokes.png --threshold 24
  lienzo preprocess depth room.png depth.png --models-dir models      # needs models/depth/ (DPT weights)
  lienzo preprocess invert lineart.png lineart-inverted.png

The output has the input's size; it is written whole or not at all.
"""


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo preprocess`."""
    parser.add_argument("kind", choices=list(PREPROCESSORS), help="the preprocessor")
    parser.add_argument("input", type=Path, help="the image to read")
    parser.add_argument("output", type=Path, help="the control image to write (.png)")
    parser.add_argument(
        "--low-threshold", type=float, help=f"canny: lower hysteresis threshold ({CANNY_LOW})"
    )
    parser.add_argument(
        "--high-threshold", type=float, help=f"canny: upper hysteresis threshold ({CANNY_HIGH})"
    )
    parser.add_argument(
        "--threshold", type=float, help=f"scribble: stroke threshold, 0..255 ({SCRIBBLE_THRESHOLD})"
    )
    parser.add_argument(
        "--model", type=Path, help="depth: a diffusers depth model folder whose depth_estimator/ to use"
    )
    parser.add_argument("--models-dir", type=Path, metavar="DIR", help="depth: models root holding depth/")


def run_preprocess(args: argparse.Namespace) -> int:
    """Run the preprocessor and write its control image atomically."""
    if args.output.suffix.lower() != ".png":
        raise InvalidArgumentError(f"the output must be a .png file, got {args.output}")
    if not args.output.parent.is_dir():
        raise InvalidArgumentError(f"the output folder {args.output.parent} does not exist; create it first")
    image = load_image(args.input)
    options = {"low_threshold": args.low_threshold, "high_threshold": args.high_threshold}
    options["threshold"] = args.threshold
    if args.kind == "depth":
        options["model_folder"] = args.model
        options["models_dir"] = library_from_args(args).root
    elif args.model is not None or args.models_dir is not None:
        raise InvalidArgumentError("--model and --models-dir are options of the depth preprocessor only")
    control = preprocess(args.kind, image, **options)
    with atomic_path(args.output) as temporary:
        control.save(temporary, format="PNG")
    print(args.output)
    return 0
