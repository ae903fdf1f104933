"""`lienzo info` and `lienzo convert`: describe a model, convert between folders and single files."""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.cli.arguments import add_family_argument, chosen_dtype
from lienzo.devices import DTYPES
from lienzo.errors import InvalidArgumentError
from lienzo.io import read_model, write_model
from lienzo.io.checkpoints import FORMATS
from lienzo.io.library import BUILTIN_FOLDER
from lienzo.io.model_files import dtype_names, parameter_count


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo info`."""
    parser.add_argument(
        "path",
        type=Path,
        nargs="?",
        default=BUILTIN_FOLDER,
        help="a diffusers folder or a .safetensors/.ckpt file (default: the built-in model)",
    )
    add_family_argument(parser)


def run_info(args: argparse.Namespace) -> int:
    """Print a model's family, format, components and settings."""
    files = read_model(args.path, family=args.family)
    spec = files.spec
    lines = [
        f"path: {args.path}",
        f"family: {files.family}",
        f"format: {files.source_format}",
        f"prediction: {spec.prediction}",
        f"noise schedule: {spec.schedule.summary()}",
        f"resolution: {spec.resolution}",
        f"latent: {spec.vae.embed_dim} channels at 1/{spec.vae.downscale_factor} of the image size, "
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
    add_family_argument(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")


def run_convert(args: argparse.Namespace) -> int:
    """Convert a model between diffusers folders and single files, optionally changing its dtype."""
    if args.dst.exists() and not args.overwrite:
        raise InvalidArgumentError(f"{args.dst} already exists; pass --overwrite to replace it")
    files = read_model(args.src, family=args.family)
    written = write_model(
        files, args.dst, format=args.format, dtype=chosen_dtype(args), overwrite=args.overwrite
    )
    print(f"wrote {files.family} model to {written}")
    return 0
