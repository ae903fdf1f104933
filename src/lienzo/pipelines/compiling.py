"""Opt-in torch.compile (TorchInductor) of a Pipeline's UNet, with inductor's on-disk graph cache kept
under lienzo's cache folder so that a second process reuses the first one's compiled code."""

from __future__ import annotations

import os
import time
import types
from pathlib import Path

import torch

from lienzo.devices import user_cache_dir
from lienzo.errors import LienzoError
from lienzo.models.unet import UNetModel

CACHE_ENVIRONMENT = "TORCHINDUCTOR_CACHE_DIR"


class CompilerUnavailableError(LienzoError):
    """torch.compile cannot run here: no C++ compiler for TorchInductor's CPU code."""


def inductor_cache_dir() -> Path:
    """`$TORCHINDUCTOR_CACHE_DIR` when set, else `$XDG_CACHE_HOME/lienzo/inductor` (~/.cache when unset)."""
    if os.environ.get(CACHE_ENVIRONMENT):
        return Path(os.environ[CACHE_ENVIRONMENT])
    return user_cache_dir("inductor")


def check_compiler(device: torch.device) -> None:
    """Raise CompilerUnavailableError when inductor has no C++ compiler for CPU code (CUDA code needs
    Triton, which comes with CUDA builds of torch)."""
    if device.type != "cpu":
        return
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except exc.InvalidCxxCompiler as error:
        raise CompilerUnavailableError(
            "--compile needs a C++ compiler for TorchInductor's CPU code and none was found (tried "
            "$CXX, g++, clang++); install one (e.g. `apt-get install g++`) or run without --compile"
        ) from error


class CompiledUNet:
    """Counts the compiled UNet's calls and times the first, which includes compiling (or loading
    inductor's cache); a later call at a new input size compiles again, untimed."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_call_seconds: float | None = None

    def __call__(self, compiled, module: UNetModel, *args, **kwargs):
        start = time.perf_counter()
        out = compiled(module, *args, **kwargs)
        if self.calls == 0:
            self.first_call_seconds = time.perf_counter() - start
        self.calls += 1
        return out


def compile_unet(unet: UNetModel, mode: str | None = None) -> CompiledUNet:
    """Make `unet`'s forward a torch.compile of UNetModel.forward (compiled on first call, per input shape);
    `mode` is torch.compile's ("reduce-overhead" adds CUDA graphs; None: inductor's default).

    The compiled function takes the module as its argument, so views of the network made later (which
    copy the bound forward to the copy) and patched weights (LoRA) run through it with their own tensors:
    the weights are graph inputs, not constants, and outputs equal eager ones within bf16 rounding."""
    device = next(unet.parameters()).device
    check_compiler(device)
    os.environ.setdefault(CACHE_ENVIRONMENT, str(inductor_cache_dir()))
    compiled = torch.compile(UNetModel.forward, mode=mode)
    timer = CompiledUNet()

    def forward(module: UNetModel, *args, **kwargs):
        return timer(compiled, module, *args, **kwargs)

    unet.forward = types.MethodType(forward, unet)
    return timer
