"""What the machine offers: the default device and dtype, whether the CPU has fast bf16, the C
allocator's settings for CPU training, and the thread count of small CPU work."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_FP16_FLAGS = ("amx_fp16", "avx512_fp16")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
"""The weight dtypes by the names the command line takes."""


class SlowPrecisionWarning(UserWarning):
    """A half-precision dtype asked for on a CPU without instructions for it."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags /proc/cpuinfo lists (empty where there is no /proc/cpuinfo)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return frozenset()
    return frozenset(cpuinfo.read_text(errors="ignore").split())


def cpu_runs_natively(dtype: torch.dtype) -> bool:
    """True for float32, and for bf16 / fp16 where the CPU has AMX or AVX-512 instructions for them."""
    flags = {torch.bfloat16: CPU_BF16_FLAGS, torch.float16: CPU_FP16_FLAGS}.get(dtype)
    return flags is None or any(flag in cpu_flags() for flag in flags)


def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists AMX-BF16 or AVX512-BF16 (bf16 matmul far faster than fp32)."""
    return cpu_runs_natively(torch.bfloat16)


def warn_if_emulated(device: torch.device, dtype: torch.dtype) -> None:
    """Warn when bf16 or fp16 is asked for on a CPU without instructions for it: torch then emulates the
    type, and a 2-core AVX2 CPU ran a bf16 matmul 24x and a bf16 convolution 44x slower than in fp32."""
    if device.type == "cpu" and not cpu_runs_natively(dtype):
        name = str(dtype).removeprefix("torch.")
        warnings.warn(
            f"this CPU has no {name} instructions (AMX or AVX-512), so {name} runs emulated, "
            "tens of times slower than float32; leave the dtype unset for float32",
            SlowPrecisionWarning,
            stacklevel=3,
        )


GLIBC_MALLOC_OPTIONS = {-1: 2**30, -2: 2**28, -3: 2**25}
"""mallopt settings: M_TRIM_THRESHOLD 1 GiB, M_TOP_PAD 256 MiB, M_MMAP_THRESHOLD 32 MiB (glibc's maximum)."""


def keep_freed_memory_for_reuse() -> bool:
    """Have glibc's malloc keep freed activation buffers instead of returning them to the OS.

    By default glibc maps every block over its (adaptive) mmap threshold afresh and trims the heap, so
    each training step page-faults its activations in again; keeping them makes a CPU training step of
    the built-in recipe about 13 % faster (bench/train_step_speed.py). Returns False off glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(option, value) == 1 for option, value in GLIBC_MALLOC_OPTIONS.items())


def user_cache_dir(name: str) -> Path:
    """`$XDG_CACHE_HOME/lienzo/<name>` (~/.cache/lienzo/<name> when unset): what lienzo derives once per
    machine and keeps between runs (compiled code, drawn class images)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lienzo" / name


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA, bfloat16 on CPUs with bf16 instructions, float32 elsewhere."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


SMALL_CPU_WORK = 128 * 128
"""Latent cells x network base channels up to which a CPU network runs on one thread: the built-in
model's UNet (16x16 latent, 64 channels) and VAE spend longer waking and waiting for a second OpenMP
thread than working in it, and a busy machine makes that wait far worse (bench/builtin_speed.py)."""


@contextlib.contextmanager
def cpu_threads_for(device: torch.device, cells: int, channels: int) -> Iterator[None]:
    """One torch thread while the block runs when `cells` x `channels` is small CPU work (SMALL_CPU_WORK);
    the thread count is left alone otherwise and restored afterwards."""
    if device.type != "cpu" or cells * channels > SMALL_CPU_WORK or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
