"""Argument helpers shared by the commands: device and dtype, model family, sizes."""

from __future__ import annotations

import argparse

import torch

from lienzo.devices import DTYPES
from lienzo.errors import InvalidArgumentError

ArgumentContainer = argparse.ArgumentParser | argparse._ArgumentGroup


def add_device_arguments(parser: ArgumentContainer) -> None:
    """The `--dtype` and `--device` options of the commands that load a model."""
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="weights dtype (default fp16 on CUDA, bf16 on CPUs with AMX/AVX512-bf16, else fp32)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")


def add_family_argument(parser: ArgumentContainer) -> None:
    """The `--family` option that overrides family detection."""
    parser.add_argument("--family", help="model family, overriding detection (e.g. sd2-v)")


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
