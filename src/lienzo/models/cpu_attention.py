"""lienzo's bf16 attention kernel for CPUs with AVX-512 BF16 (cpu_attention.c), built on first use.

PyTorch's CPU flash kernel was measured to run its two matrix products at float32 speed on a CPU without
AMX; the C kernel here does them with AVX-512 BF16 dot products and the same numerics (float32 scores
and softmax, bf16 probabilities, float32 sums), 3-4x faster at SD's 4096-token self-attention
(docs/benchmarks.md). It is compiled once per source and compiler into the user's cache folder and
loaded with ctypes after torch, so its OpenMP threads are the ones torch already runs (one libgomp).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from lienzo.devices import cpu_flags, user_cache_dir

SOURCE = Path(__file__).with_name("cpu_attention.c")
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16")
COMPILER_FLAGS = (
    "-O3",
    "-mavx512f",
    "-mavx512bw",
    "-mavx512vl",
    "-mavx512dq",
    "-mavx512bf16",
    "-mfma",
    "-fopenmp",
    "-shared",
    "-fPIC",
)
MAX_DIM = 512
WORK_PER_THREAD = 2**22
"""Multiply-adds (queries x keys x head dim x heads) below which one more thread costs more than it brings."""
Q_BLOCK = 32
"""Query rows per work item the threads share out."""
_enabled = [True]


class SlowAttentionWarning(UserWarning):
    """The CPU could run lienzo's bf16 attention kernel, but it could not be built."""


class AttentionShape(ctypes.Structure):
    """The C kernel's `lienzo_attention_shape`: sizes, element strides, query block and scale."""

    _fields_ = [
        (name, ctypes.c_int64)
        for name in (
            "batch", "heads", "q_len", "k_len", "dim",
            "q_stride_b", "q_stride_h", "q_stride_l",
            "k_stride_b", "k_stride_h", "k_stride_l",
            "v_stride_b", "v_stride_h", "v_stride_l",
            "o_stride_b", "o_stride_h", "o_stride_l",
            "q_block",
        )
    ] + [("scale", ctypes.c_float)]  # fmt: skip


def set_cpu_attention(enabled: bool) -> None:
    """Use lienzo's bf16 CPU attention kernel where it applies (the default) or PyTorch's flash kernel
    everywhere (the same outputs within bf16 rounding, 3-4x slower at SD's long self-attention)."""
    _enabled[0] = enabled


def cpu_attention_enabled() -> bool:
    """Whether lienzo's kernel may run (set_cpu_attention)."""
    return _enabled[0]


def cpu_supports_kernel() -> bool:
    """True on x86-64 Linux CPUs listing every AVX-512 extension the kernel uses."""
    return platform.machine() in ("x86_64", "AMD64") and all(flag in cpu_flags() for flag in REQUIRED_FLAGS)


def build_library(compiler: str, cache: Path) -> Path:
    """Compile cpu_attention.c into `cache` (once per source, compiler and flags) and return the path.

    The library is written under a temporary name and renamed, so a concurrent build never leaves a
    half-written file behind."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join((compiler, *COMPILER_FLAGS)).encode()).hexdigest()[:16]
    target = cache / f"cpu_attention-{key}.so"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        built = Path(scratch) / target.name
        subprocess.run(
            [compiler, *COMPILER_FLAGS, "-o", str(built), str(SOURCE)],
            check=True,
            capture_output=True,
            text=True,
        )
        os.replace(built, target)
    return target


@functools.cache
def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernel, or None where the CPU lacks AVX-512 BF16 or no C compiler could build it
    (then a SlowAttentionWarning says why, once)."""
    if not cpu_supports_kernel():
        return None
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return _unbuilt("no C compiler was found (install gcc, or set CC)")
    try:
        library = ctypes.CDLL(str(build_library(compiler, user_cache_dir("kernels"))))
    except subprocess.CalledProcessError as failure:
        first_line = (failure.stderr or "").strip().splitlines()[:1]
        return _unbuilt(f"{compiler} failed: {first_line[0] if first_line else failure}")
    except OSError as failure:
        return _unbuilt(str(failure))
    library.lienzo_attention.restype = ctypes.c_int
    return library


def _unbuilt(reason: str) -> None:
    warnings.warn(
        f"lienzo's bf16 CPU attention kernel could not be built ({reason}); attention runs on "
        "PyTorch's kernel, 3-4x slower at SD's long self-attention",
        SlowAttentionWarning,
        stacklevel=4,
    )


@torch.compiler.assume_constant_result
def kernel_available() -> bool:
    """Whether the kernel is built and loaded (builds it on the first call); torch.compile takes the
    answer as a constant instead of tracing the build."""
    return kernel_library() is not None


def applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """True where lienzo's kernel takes `attention(q, k, v)`: on, a bf16 CPU inference call (nothing
    records gradients) of (batch, heads, tokens, dim) tensors with an even head dimension up to 512, on a
    CPU (and a build) that has the kernel."""
    return (
        _enabled[0]
        and q.device.type == "cpu"
        and q.dtype == k.dtype == v.dtype == torch.bfloat16
        and q.dim() == k.dim() == v.dim() == 4
        and q.shape[:2] == k.shape[:2] == v.shape[:2]
        and k.shape[2] == v.shape[2] > 0
        and q.numel() > 0
        and q.shape[3] == k.shape[3] == v.shape[3]
        and q.shape[3] % 2 == 0
        and q.shape[3] <= MAX_DIM
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
        and kernel_available()
    )


@torch.library.custom_op("lienzo::cpu_attention", mutates_args=())
def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v by lienzo's kernel (where `applies`); the result is a (batch, heads,
    tokens, dim) view of a (batch, tokens, heads, dim) tensor, so merging the heads costs no copy. A
    PyTorch operator, so torch.compile calls it instead of tracing into ctypes."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    batch, heads, q_len, dim = q.shape
    out = torch.empty(batch, q_len, heads, dim, dtype=q.dtype).transpose(1, 2)
    shape = AttentionShape(
        batch, heads, q_len, k.shape[2], dim,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        Q_BLOCK, dim**-0.5,
    )  # fmt: skip
    work = batch * heads * q_len * k.shape[2] * dim
    threads = max(1, min(torch.get_num_threads(), work // WORK_PER_THREAD))
    pointer = ctypes.c_void_p
    status = kernel_library().lienzo_attention(
        ctypes.byref(shape), pointer(q.data_ptr()), pointer(k.data_ptr()), pointer(v.data_ptr()),
        pointer(out.data_ptr()), threads,
    )  # fmt: skip
    if status != 0:
        raise MemoryError("lienzo's CPU attention kernel could not allocate its packed keys and values")
    return out


@attend.register_fake
def _attend_output(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """What `attend` returns, for torch.compile's tracing: q's shape, (batch, tokens, heads, dim) memory."""
    batch, heads, tokens, dim = q.shape
    return q.new_empty(batch, tokens, heads, dim).transpose(1, 2)
