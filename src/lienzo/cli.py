"""The `lienzo` command line: one subcommand per task, each a thin wrapper over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InvalidArgumentError, LienzoError
from .io import read_model, write_model
from .io.model_files import dtype_names, parameter_count

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FORMATS = ("diffusers", "single-file")


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, how it adds its arguments, and what it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo info`."""
    parser.add_argument("path", type=Path, help="a diffusers folder or a .safetensors/.ckpt file")
    parser.add_argument("--family", help="model family, overriding detection (e.g. sd2-v)")


def run_info(args: argparse.Namespace) -> int:
    """Print a model's family, format, components and settings."""
    files = read_model(args.path, family=args.family)
    spec = files.spec
    downscale = 2 ** (len(spec.vae.ch_mult) - 1)
    lines = [
        f"path: {args.path}",
        f"family: {files.family}",
        f"format: {files.source_format}",
        f"prediction: {spec.prediction}",
        f"resolution: {spec.resolution}",
        f"latent: {spec.vae.embed_dim} channels at 1/{downscale} of the image size, "
        f"scaling factor {spec.vae.scaling_factor}",
        f"vector conditioning: {spec.vector_conditioning or 'none'}",
        "components:",
    ]
    for name, state_dict in files.components().items():
        lines.append(
            f"  {name}: {parameter_count(state_dict):,} parameters, {', '.join(dtype_names(state_dict))}"
        )
    lines.append("configs:")
    lines.append(f"  unet: {spec.unet}")
    lines.append(f"  vae: {spec.vae}")
    for index, tower in enumerate(spec.text_encoders):
        lines.append(f"  text_encoder[{index}]: {tower.config}")
    print("\n".join(lines))
    return 0


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo convert`."""
    parser.add_argument("src", type=Path, help="a diffusers folder or a .safetensors/.ckpt file")
    parser.add_argument("dst", type=Path, help="output: a .safetensors file or a folder")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating-point weights")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="output layout (default: single-file for a .safetensors DST, else diffusers)",
    )
    parser.add_argument("--family", help="model family, overriding detection (e.g. sd2-v)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")


def run_convert(args: argparse.Namespace) -> int:
    """Convert a model between diffusers folders and single files, optionally changing its dtype."""
    if args.dst.exists() and not args.overwrite:
        raise InvalidArgumentError(f"{args.dst} already exists; pass --overwrite to replace it")
    files = read_model(args.src, family=args.family)
    dtype = DTYPES[args.dtype] if args.dtype else None
    written = write_model(files, args.dst, format=args.format, dtype=dtype, overwrite=args.overwrite)
    print(f"wrote {files.family} model to {written}")
    return 0


COMMANDS = [
    Command("info", "show a model's family, format, components and settings", add_info_arguments, run_info),
    Command("convert", "convert diffusers folders and single files", add_convert_arguments, run_convert),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="lienzo", description="Stable Diffusion, built whole.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = subcommands.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `lienzo` command line; user errors print `error: <message>` and return 1."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except LienzoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
