"""Mixed precision choice: bf16 autocast on CPUs with bf16 instructions, bf16/fp16 on CUDA, fp32 weights."""

from __future__ import annotations

import contextlib

import torch

from lienzo.devices import cpu_has_bf16, warn_if_emulated
from lienzo.errors import InvalidArgumentError


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a mixed-precision mode ("auto", "no", "bf16", "fp16"), or None for fp32."""
    if mode == "no":
        return None
    if mode == "fp16":
        if device.type != "cuda":
            raise InvalidArgumentError("fp16 mixed precision needs a CUDA device; use bf16 or no on CPU")
        return torch.float16
    if mode == "bf16":
        warn_if_emulated(device, torch.bfloat16)
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast for `dtype` on the device type, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
