"""TAESD decoder weights (`taesd_decoder.safetensors` / `.pth`, also with a `decoder.` prefix) into
lienzo.models.taesd.TinyDecoder."""

from __future__ import annotations

import os

import torch

from lienzo.errors import InvalidArgumentError
from lienzo.io.formats import read_state_dict
from lienzo.models.taesd import TinyDecoder

PREFIX = "decoder."
FIRST_CONVOLUTION = "1.weight"


def load_tiny_decoder(path: str | os.PathLike, device=None, dtype: torch.dtype | None = None) -> TinyDecoder:
    """The TAESD decoder in a weights file, in eval mode without gradients; a file of another layout
    raises InvalidArgumentError naming what is expected."""
    weights = read_state_dict(path)
    weights = {key.removeprefix(PREFIX): tensor for key, tensor in weights.items()}
    first = weights.get(FIRST_CONVOLUTION)
    if first is None or first.ndim != 4:
        raise InvalidArgumentError(
            f"{path} is not a TAESD decoder (no {FIRST_CONVOLUTION!r} convolution); give "
            "taesd_decoder.safetensors (SD 1.x/2.x) or taesdxl_decoder.safetensors (SDXL)"
        )
    decoder = TinyDecoder(first.shape[1])
    try:
        decoder.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[0][:160]
        raise InvalidArgumentError(
            f"{path} does not match TAESD's decoder layout ({detail}); give taesd_decoder.safetensors"
        ) from None
    return decoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
