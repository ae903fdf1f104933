"""Default device and dtype: fp16 on CUDA, bf16 on CPUs with bf16 instructions, fp32 elsewhere."""

from __future__ import annotations

import platform
import sys
import warnings

import pytest
import torch

import lienzo
import lienzo.devices as devices
from lienzo.cli import main
from lienzo.training.precision import autocast_dtype


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
    devices.cpu_flags.cache_clear()
    try:
        assert devices.cpu_has_bf16()
        cpuinfo.write_text("flags\t\t: fpu sse avx2\n")
        devices.cpu_flags.cache_clear()
        assert not devices.cpu_has_bf16()
    finally:
        devices.cpu_flags.cache_clear()


@pytest.mark.parametrize(
    ("flags", "dtype", "native"),
    [
        ("avx2 fma", torch.float32, True),
        ("avx2 fma", torch.bfloat16, False),
        ("avx2 fma", torch.float16, False),
        ("avx512f avx512_bf16", torch.bfloat16, True),
        ("avx512f avx512_bf16", torch.float16, False),
        ("amx_bf16 amx_fp16 amx_tile", torch.float16, True),
    ],
)
def test_half_precision_is_native_only_with_its_instructions(monkeypatch, flags, dtype, native):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset(flags.split()))
    assert devices.cpu_runs_natively(dtype) is native


def test_an_emulated_half_precision_is_warned_about_and_a_native_one_is_not(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.warns(devices.SlowPrecisionWarning, match="no bfloat16 instructions"):
        devices.warn_if_emulated(cpu, torch.bfloat16)
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        devices.warn_if_emulated(cpu, torch.bfloat16)
        devices.warn_if_emulated(cpu, torch.float32)
        devices.warn_if_emulated(torch.device("cuda"), torch.float16)


def test_loading_or_training_in_an_emulated_half_precision_warns(monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.warns(devices.SlowPrecisionWarning, match="no float16 instructions"):
        lienzo.load(device="cpu", dtype=torch.float16)
    with pytest.warns(devices.SlowPrecisionWarning, match="no bfloat16 instructions"):
        assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_the_command_line_prints_a_warning_as_one_line(capsys, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["models", "--kind", "checkpoints", "--models-dir", str(tmp_path)]) == 0
        capsys.readouterr()
        warnings.warn("bf16 runs emulated here", devices.SlowPrecisionWarning, stacklevel=1)
    assert capsys.readouterr().err == "warning: bf16 runs emulated here\n"


def test_glibc_malloc_accepts_the_training_settings():
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert devices.keep_freed_memory_for_reuse() is on_glibc
