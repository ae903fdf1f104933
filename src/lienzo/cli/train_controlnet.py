"""`lienzo train controlnet`: a ControlNet for the model trained on captioned images and their control
images, saved as a diffusers ControlNet folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from lienzo.cli.train_arguments import (
    MethodDefaults,
    add_training_arguments,
    check_new_output,
    run_method,
)
from lienzo.errors import InvalidArgumentError
from lienzo.models.controlnet import ControlNet
from lienzo.pipelines.control_units import ControlUnit
from lienzo.pipelines.controlnets import LoadedControlNet, load_controlnet
from lienzo.pipelines.output import write_png_atomically
from lienzo.pipelines.preprocessors import preprocess
from lienzo.recipes.fine_tuning import image_grid
from lienzo.training.control_images import CONTROL_KINDS, CONTROL_SUFFIX
from lienzo.training.controlnet_training import train_controlnet
from lienzo.training.method_run import RunOptions

CONTROLNET_DEFAULTS = MethodDefaults(steps=1000, batch_size=8, learning_rate=1e-4)

CONTROLNET_EPILOG = f"""examples:
  lienzo train controlnet --data photos/ --control canny --out models/controlnet/my-canny
  lienzo train controlnet --data pairs/ --out my-controlnet      # NAME{CONTROL_SUFFIX} beside each NAME.png
  lienzo train controlnet --data photos/ --control canny --out my-canny --resume   # continue a stopped run
  lienzo train controlnet --data scenes/ --control canny --out v2-canny --model shapes-v2 \
      --hint-from shapes-v1-canny                # start the edge encoder from another model's ControlNet

The run's state, loss.csv, loss.png, samples/ and the control-image cache go to OUT-training/ beside the
folder. Use it with --controlnet OUT --control-image EDGES.png.
"""


def add_controlnet_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo train controlnet`."""
    parser.add_argument("--out", type=Path, required=True, help="the ControlNet folder to write (diffusers)")
    control = parser.add_argument_group("control images")
    control.add_argument(
        "--control",
        choices=CONTROL_KINDS,
        help=f"preprocessor that makes the control images (default: the NAME{CONTROL_SUFFIX} files)",
    )
    control.add_argument("--canny-low", type=float, default=100.0, help="canny low threshold (100)")
    control.add_argument("--canny-high", type=float, default=200.0, help="canny high threshold (200)")
    control.add_argument("--scribble-threshold", type=float, default=32.0, help="scribble threshold (32)")
    control.add_argument(
        "--hint-from",
        metavar="CONTROLNET",
        help="start the control-image encoder (hint block) from this ControlNet's, a name or folder made "
        "for the same kind of control image (it may be for another base model of the same VAE factor)",
    )
    control.add_argument("--fp16", action="store_true", help="save the weights in float16")
    add_training_arguments(parser, CONTROLNET_DEFAULTS)


def control_options(args: argparse.Namespace) -> dict:
    """The chosen preprocessor's options."""
    if args.control == "canny":
        return {"low_threshold": args.canny_low, "high_threshold": args.canny_high}
    if args.control == "scribble":
        return {"threshold": args.scribble_threshold}
    return {}


def controlnet_sampler(pipe, options: RunOptions):
    """`sampler(controlnet, control_image)` for train_controlnet: each sample prompt drawn with the ControlNet
    as trained so far, tiled after the control image into samples/step_NNNNNN.png; None without prompts."""
    if not options.sample_prompts:
        return None

    def sampler(controlnet, control_path: Path):
        with Image.open(control_path) as opened:
            control = opened.convert("RGB")
        unit = ControlUnit(LoadedControlNet(controlnet, "training"), control)

        def sample_fn(step: int, folder: Path) -> None:
            with torch.no_grad():
                images = [
                    pipe.generate(
                        prompt,
                        seed=options.seed + k,
                        steps=options.sample_steps,
                        controlnets=[unit],
                        progress=False,
                    )[0]
                    for k, prompt in enumerate(options.sample_prompts)
                ]
            tiles = [control.resize(images[0].size), *images]
            folder.mkdir(parents=True, exist_ok=True)
            write_png_atomically(image_grid(tiles, columns=len(tiles)), folder / f"step_{step:06d}.png")

        return sample_fn

    return sampler


def hint_source(pipe, name: str | None) -> ControlNet | None:
    """The ControlNet `--hint-from` names, for its hint block; None without one."""
    if name is None:
        return None
    found = load_controlnet(name, library=pipe.model_library(), device=pipe.device, dtype=torch.float32)
    if not isinstance(found.model, ControlNet):
        raise InvalidArgumentError(f"--hint-from {name} is a T2I-Adapter; give a ControlNet")
    return found.model


def run_train_controlnet(args: argparse.Namespace) -> int:
    """Train, write the folder, say where it went and how long it took."""
    if args.out.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        raise InvalidArgumentError(f"--out {args.out} names a file; a ControlNet is written as a folder")
    check_new_output(args.out, args.resume)

    def train(options, pipe):
        train_controlnet(
            options,
            pipe,
            args.out,
            control=args.control,
            control_options=control_options(args),
            preprocess=preprocess,
            resume=args.resume,
            fp16=args.fp16,
            sampler=controlnet_sampler(pipe, options),
            device=pipe.device,
            hint_from=hint_source(pipe, args.hint_from),
        )

    return run_method(args, "ControlNet", "ControlNet", train)
