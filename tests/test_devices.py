"""Default device and dtype: fp16 on CUDA, bf16 on CPUs with bf16 instructions, fp32 elsewhere."""

from __future__ import annotations

import platform
import sys

import torch

import lienzo.devices as devices


def test_cpu_default_follows_the_bf16_flags(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert devices.default_dtype(cpu) == torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    assert devices.default_dtype(cpu) == torch.float32


def test_cuda_default_is_fp16():
    assert devices.default_dtype(torch.device("cuda")) == torch.float16


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    monkeypatch.setattr(devices, "Path", lambda _: cpuinfo)
    assert devices.cpu_has_bf16()
    cpuinfo.write_text("flags\t\t: fpu sse avx2\n")
    assert not devices.cpu_has_bf16()


def test_glibc_malloc_accepts_the_training_settings():
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert devices.keep_freed_memory_for_reuse() is on_glibc
