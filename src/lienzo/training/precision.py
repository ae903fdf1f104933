"""Mixed precision choice: bf16 autocast on CPUs with bf16 instructions, bf16/fp16 on CUDA, fp32 weights."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from lienzo.errors import InvalidArgumentError

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists AMX-BF16 or AVX512-BF16 (bf16 matmul far faster than fp32)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return False
    flags = set(cpuinfo.read_text(errors="ignore").split())
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a mixed-precision mode ("auto", "no", "bf16", "fp16"), or None for fp32."""
    if mode == "no":
        return None
    if mode == "fp16":
        if device.type != "cuda":
            raise InvalidArgumentError("fp16 mixed precision needs a CUDA device; use bf16 or no on CPU")
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast for `dtype` on the device type, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
