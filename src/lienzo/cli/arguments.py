"""Argument helpers shared by the commands: device and dtype, model family, model folders, sizes."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lienzo.devices import DTYPES
from lienzo.errors import InvalidArgumentError
from lienzo.io.library import ModelLibrary, library_from_config

ArgumentContainer = argparse.ArgumentParser | argparse._ArgumentGroup


def add_device_arguments(parser: ArgumentContainer) -> None:
    """The `--dtype` and `--device` options of the commands that load a model."""
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="weights dtype (default fp16 on CUDA, bf16 on CPUs with AMX/AVX512-bf16, else fp32)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    add_cpu_kernel_arguments(parser)


def add_cpu_kernel_arguments(parser: ArgumentContainer) -> None:
    """`--no-weight-packing` and `--no-cpu-attention` (lienzo.set_weight_packing, lienzo.set_cpu_attention;
    `main` applies them)."""
    parser.add_argument(
        "--no-weight-packing",
        action="store_true",
        help="keep no packed copy of the convolution weights for bf16 on CPU: ~1 GiB less memory for "
        "SD 1.5, slower convolutions, the same images",
    )
    parser.add_argument(
        "--no-cpu-attention",
        action="store_true",
        help="run attention on PyTorch's kernel instead of lienzo's bf16 CPU kernel: the same images "
        "within bf16 rounding, 3-4x slower attention",
    )


def add_family_argument(parser: ArgumentContainer) -> None:
    """The `--family` option that overrides family detection."""
    parser.add_argument("--family", help="model family, overriding detection (e.g. sd2-v)")


LIBRARY_FLAGS = {
    "models_dir": "root",
    "lora_dir": "loras",
    "embeddings_dir": "embeddings",
    "hypernetwork_dir": "hypernetworks",
}
"""Each folder flag's argparse destination and the ModelLibrary field it sets."""


def add_library_arguments(parser: ArgumentContainer) -> None:
    """`--models-dir`, `--lora-dir`, `--embeddings-dir` and `--hypernetwork-dir`: where named models
    are looked up (they beat lienzo.toml, which beats the default ./models)."""
    parser.add_argument(
        "--models-dir",
        type=Path,
        metavar="DIR",
        help="models root with checkpoints/, loras/, embeddings/, ... or A1111's Stable-diffusion/, Lora/, "
        "... (default: [models] in ./lienzo.toml, ~/.config/lienzo/config.toml or $LIENZO_CONFIG, "
        "else ./models)",
    )
    parser.add_argument(
        "--lora-dir", type=Path, metavar="DIR", help="folder of LoRA/LyCORIS files (instead of the root's)"
    )
    parser.add_argument(
        "--embeddings-dir", type=Path, metavar="DIR", help="folder of textual-inversion embeddings"
    )
    parser.add_argument("--hypernetwork-dir", type=Path, metavar="DIR", help="folder of hypernetworks")


def library_from_args(args: argparse.Namespace) -> ModelLibrary:
    """The model library the folder flags, the config file and the defaults describe, in that order
    of precedence; plain paths are allowed (the command line may name any file)."""
    changes = {field: getattr(args, flag, None) for flag, field in LIBRARY_FLAGS.items()}
    return library_from_config(allow_paths=True, **changes)


def chosen_dtype(args: argparse.Namespace) -> torch.dtype | None:
    """The torch dtype named by `--dtype`, or None for the device's default."""
    return DTYPES[args.dtype] if args.dtype else None


def parse_size(text: str) -> tuple[int, int]:
    """(width, height) from "512x768" (or "512" for a square)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdigit() for part in parts):
        raise InvalidArgumentError(f"--size must look like 512x768 (WIDTHxHEIGHT), got {text!r}")
    width, height = (int(part) for part in (parts * 2)[:2])
    return width, height


def parse_sampler_options(pairs: list[str] | None) -> dict[str, float | str]:
    """{"eta": 0.5, ...} from repeated `KEY=VALUE` texts; values that are not numbers stay strings."""
    options: dict[str, float | str] = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip() or not value.strip():
            raise InvalidArgumentError(
                f"--sampler-option must look like KEY=VALUE (e.g. eta=0.5), got {pair!r}"
            )
        try:
            options[key.strip()] = float(value)
        except ValueError:
            options[key.strip()] = value.strip()
    return options
