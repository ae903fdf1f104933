"""`lienzo merge` (A1111's Checkpoint Merger, LoRA and VAE bake-in) and `lienzo extract-lora` (kohya's)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.cli.arguments import add_library_arguments, library_from_args
from lienzo.devices import DTYPES
from lienzo.errors import InvalidArgumentError
from lienzo.io import read_model
from lienzo.io.vae_files import read_vae
from lienzo.training.extract_lora import extract_lora, lora_metadata, write_lora
from lienzo.training.merge import (
    LoraBake,
    bake_loras,
    bake_vae,
    check_destination,
    merge_metadata,
    merge_models,
    write_merged,
)

OUTPUT_DTYPES = ("fp16", "fp32")
MODELS_PER_METHOD = {"weighted-sum": 2, "add-difference": 3, "no-interpolation": 1}
MERGE_EPILOG = """\
methods (M = --multiplier, as A1111's Checkpoint Merger):
  weighted-sum      (1 - M) * A + M * B
  add-difference    A + M * (B - C)   (e.g. A = an inpaint model, B = a fine-tune, C = B's base)
  no-interpolation  A alone, to bake a VAE or LoRAs into it or change its dtype

examples:
  lienzo merge anime.safetensors photo.safetensors --multiplier 0.4 -o mix.safetensors
  lienzo merge sd-inpaint mine sd15 --method add-difference --multiplier 1 -o mine-inpaint.safetensors
  lienzo merge mine --method no-interpolation --lora ink:0.8 --bake-vae vae-ft-mse -o baked.safetensors
"""
EXTRACT_EPILOG = """\
example:
  lienzo extract-lora mine.safetensors sd15.safetensors --rank 32 --conv-rank 16 -o mine-lora.safetensors
"""


def add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo merge`."""
    parser.add_argument(
        "models", nargs="+", metavar="MODEL", help="A, then B and C as the method needs (names or paths)"
    )
    parser.add_argument("--method", choices=tuple(MODELS_PER_METHOD), default="weighted-sum")
    parser.add_argument("--multiplier", "-m", type=float, default=0.3, help="M (default 0.3, as A1111)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the merged .safetensors file")
    parser.add_argument(
        "--dtype", choices=OUTPUT_DTYPES, default="fp32", help="output weights (default fp32)"
    )
    parser.add_argument("--bake-vae", metavar="VAE", help="a VAE (name or path) to put in the merged model")
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME:W[:TW]",
        help="bake a LoRA in at strength W (text encoders TW, default W); repeatable",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    add_library_arguments(parser)


def parse_lora(text: str) -> tuple[str, float, float | None]:
    """(name, strength, text strength) from "NAME", "NAME:W" or "NAME:W:TW"."""
    numbers: list[float] = []
    name = text
    while len(numbers) < 2 and ":" in name:
        head, _, tail = name.rpartition(":")
        try:
            value = float(tail)
        except ValueError:
            break
        numbers.insert(0, value)
        name = head
    if not name.strip():
        raise InvalidArgumentError(f"--lora must look like NAME:W (e.g. ink:0.8), got {text!r}")
    strength = numbers[0] if numbers else 1.0
    return name, strength, numbers[1] if len(numbers) > 1 else None


def run_merge(args: argparse.Namespace) -> int:
    """Merge checkpoints, bake in LoRAs and a VAE, and write one .safetensors file."""
    wanted = MODELS_PER_METHOD[args.method]
    if len(args.models) != wanted:
        raise InvalidArgumentError(
            f"--method {args.method} takes {wanted} model(s) (A{', B' if wanted > 1 else ''}"
            f"{', C' if wanted > 2 else ''}), got {len(args.models)}"
        )
    output = check_destination(args.output, overwrite=args.overwrite)
    library = library_from_args(args)
    paths = [library.resolve("checkpoints", name) for name in args.models]
    loras = [
        LoraBake(library.resolve("loras", name), strength, text)
        for name, strength, text in map(parse_lora, args.lora)
    ]
    vae_path = library.resolve("vae", args.bake_vae) if args.bake_vae else None
    vae = read_vae(vae_path) if vae_path is not None else None
    models = [read_model(path) for path in paths]
    method = args.method.replace("-", "_")
    merged = merge_models(*models, method=method, multiplier=args.multiplier)
    if loras:
        merged = bake_loras(merged, loras)
    if vae is not None:
        merged = bake_vae(merged, vae, source=str(vae_path))
    dtype = DTYPES[args.dtype]
    inpainting = len(models) > 1 and models[0].spec.unet.in_channels > models[1].spec.unet.in_channels
    metadata = merge_metadata(
        paths,
        method=method,
        multiplier=args.multiplier,
        dtype=dtype,
        vae=vae_path,
        loras=loras,
        inpainting=inpainting,
    )
    write_merged(merged, output, dtype=dtype, metadata=metadata, overwrite=args.overwrite)
    print(f"wrote {merged.family} model to {output}")
    return 0


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo extract-lora`."""
    parser.add_argument("tuned", help="the fine-tuned model (name or path)")
    parser.add_argument("base", help="the model it was tuned from (name or path)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the LoRA .safetensors file")
    parser.add_argument("--rank", type=int, required=True, help="rank of linear and 1x1 layers")
    parser.add_argument(
        "--conv-rank",
        type=int,
        help="also extract the UNet's resnets and down/upsamplers, their 3x3 convs at this rank (LoCon)",
    )
    parser.add_argument(
        "--clamp-quantile", type=float, default=0.99, help="clamp the factors to this quantile (default 0.99)"
    )
    parser.add_argument("--no-clamp", action="store_true", help="keep the SVD factors unclamped")
    parser.add_argument(
        "--min-diff",
        type=float,
        default=0.01,
        help="leave the text encoders out when none of their weights moved more than this (default 0.01)",
    )
    parser.add_argument(
        "--dtype", choices=OUTPUT_DTYPES, default="fp32", help="output weights (default fp32)"
    )
    parser.add_argument("--device", help="where to run the SVDs: cpu, cuda, ... (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    add_library_arguments(parser)


def run_extract(args: argparse.Namespace) -> int:
    """Extract a LoRA from the difference of two checkpoints and write it."""
    output = check_destination(args.output, overwrite=args.overwrite)
    library = library_from_args(args)
    tuned = read_model(library.resolve("checkpoints", args.tuned))
    base = read_model(library.resolve("checkpoints", args.base))
    lora = extract_lora(
        tuned,
        base,
        rank=args.rank,
        conv_rank=args.conv_rank,
        clamp_quantile=None if args.no_clamp else args.clamp_quantile,
        min_diff=args.min_diff,
        device=args.device,
    )
    metadata = lora_metadata(base, rank=args.rank, conv_rank=args.conv_rank)
    write_lora(lora, output, metadata=metadata, dtype=DTYPES[args.dtype], overwrite=args.overwrite)
    modules = len(lora) // 3
    texts = sum(1 for key in lora if key.startswith("lora_te") and key.endswith(".alpha"))
    print(f"wrote a LoRA of {modules} modules ({texts} in the text encoders) to {output}")
    return 0
