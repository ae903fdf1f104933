"""Opt-in torch.compile of the UNet: same outputs as eager, views keep their own weights, a missing C++
compiler is a clear error from Python and from `lienzo generate --compile`.

Compiling even the tiny UNet takes minutes on a 2-core CPU (7 min measured under load), so the two
tests that compile are `slow`."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch._dynamo
from PIL import Image
from torch._inductor import config as inductor_config

from lienzo.adapters.patcher import module_view
from lienzo.models.conditioning import Conditioning
from lienzo.models.unet import UNetModel
from lienzo.pipelines.compiling import CompilerUnavailableError, compile_unet, inductor_cache_dir
from test_cli_generate import FAST, SOURCE_ROOT, run_cli
from tiny_models import TINY_UNET, tiny_pipeline_folder

COMPILE_TIMEOUT = 1800
"""Seconds a CLI run that compiles may take (run_cli's 300 s is too short on a busy 2-core CPU)."""


def tiny_unet() -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(TINY_UNET).eval().requires_grad_(False)


def inputs() -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([999.0, 10.0])
    return x, t, Conditioning(context=torch.randn(2, 5, TINY_UNET.context_dim, generator=generator))


@pytest.mark.slow
def test_compiled_unet_matches_eager_and_views_use_their_own_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    unet = tiny_unet()
    x, t, cond = inputs()
    with torch.inference_mode():
        eager = unet(x, t, cond)
        timer = compile_unet(unet)
        compiled = unet(x, t, cond)
        assert timer.calls == 1 and timer.first_call_seconds > 0
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
        view = module_view(unet)
        assert view.forward.__self__ is view
        view.out[2].weight = torch.nn.Parameter(view.out[2].weight * 2, requires_grad=False)
        view.out[2].bias = torch.nn.Parameter(view.out[2].bias * 2, requires_grad=False)
        torch.testing.assert_close(view(x, t, cond), 2 * eager, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(unet(x, t, cond), eager, rtol=1e-4, atol=1e-4)
    assert timer.calls == 3
    assert any((tmp_path / "inductor").iterdir())


def test_the_bf16_unet_traces_into_one_graph():
    """Dynamo alone (no inductor, seconds): no graph break, so inductor sees the whole UNet; the packed
    convolutions step aside under compile and lienzo's attention kernel is one operator."""
    unet = tiny_unet().bfloat16().to(memory_format=torch.channels_last)
    x, t, cond = inputs()
    x = x.bfloat16().contiguous(memory_format=torch.channels_last)
    cond = Conditioning(context=cond.context.bfloat16())
    with torch.inference_mode():
        explained = torch._dynamo.explain(unet.forward)(x, t, cond)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("lienzo-no-such-compiler",))
    with pytest.raises(CompilerUnavailableError, match="C\\+\\+ compiler"):
        compile_unet(tiny_unet())


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert inductor_cache_dir() == tmp_path / "lienzo" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert inductor_cache_dir() == tmp_path / "elsewhere"


def test_generate_compile_without_a_compiler_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "lienzo-no-such-compiler")
    arguments = ["generate", "a fox", "--model", tiny_pipeline_folder("sd1"), *FAST, "--compile", "-o", "out"]
    result = run_cli(arguments, tmp_path)
    assert result.returncode != 0
    assert "needs a C++ compiler" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_generate_compile_makes_the_same_image(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    folder = tiny_pipeline_folder("sd1")
    common = ["generate", "a fox", "--model", folder, *FAST, "--seed", "3", "--dtype", "fp32"]
    plain = run_cli([*common, "-o", "plain.png"], tmp_path)
    environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lienzo.cli", *map(str, [*common, "--compile", "-o", "compiled.png"])]
    compiled = subprocess.run(
        command, capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=COMPILE_TIMEOUT
    )
    assert plain.returncode == 0, plain.stderr
    assert compiled.returncode == 0, compiled.stderr
    assert "--compile: the first UNet call took" in compiled.stderr
    a = np.asarray(Image.open(tmp_path / "plain.png"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "compiled.png"), dtype=np.int16)
    assert np.abs(a - b).max() <= 1
