"""Opt-in fast modes on a tiny SD 1.x model: neutral settings are the exact path, each mode changes the
computation as it says (UNet calls, rows, blocks, tokens), bad values are refused, PNGs reproduce."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lienzo import load
from lienzo.cli import main
from lienzo.devices import cpu_threads_for
from lienzo.diffusion import Conditioning
from lienzo.errors import InvalidArgumentError
from lienzo.models.blocks import BasicTransformerBlock
from lienzo.models.feature_reuse import FeatureReuse
from lienzo.models.token_merge import merge_plan
from lienzo.pipelines.fast_modes import FastModes
from lienzo.pipelines.metadata import format_parameters, parse_parameters, read_parameters
from tiny_models import tiny_pipeline_folder

SETTINGS = {"width": 32, "height": 32, "steps": 6, "sampler": "euler", "seed": 3, "progress": False}


@pytest.fixture(scope="module")
def pipe():
    return load(tiny_pipeline_folder("sd1"), dtype=torch.float32)


def pixels(image: Image.Image) -> torch.Tensor:
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).float()


def generate(pipe, **more) -> Image.Image:
    return pipe.generate("a red circle", **SETTINGS, **more)[0]


def test_neutral_settings_are_the_exact_path_and_each_mode_changes_the_image(pipe):
    exact = generate(pipe)
    neutral = generate(pipe, fast=FastModes(cfg_cutoff=1.0, deepcache=1, tome=0.0))
    assert neutral.tobytes() == exact.tobytes()
    for mode in (FastModes(cfg_cutoff=0.5), FastModes(deepcache=3), FastModes(tome=0.5)):
        assert generate(pipe, fast=mode).tobytes() != exact.tobytes(), mode


def unet_rows(pipe) -> tuple[list[int], list[int], list]:
    """Hooks recording each UNet call's batch rows, each call of the second input block (run only by a
    whole UNet) and the token counts each self-attention sees."""
    rows, deep_calls, tokens = [], [], []
    handles = [pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))]
    handles.append(pipe.unet.input_blocks[1].register_forward_pre_hook(lambda *_: deep_calls.append(1)))
    for block in pipe.unet.modules():
        if isinstance(block, BasicTransformerBlock):
            record = lambda module, args: tokens.append(args[0].shape[1])  # noqa: E731
            handles.append(block.attn1.to_q.register_forward_pre_hook(record))
    return rows, deep_calls, tokens, handles


@pytest.mark.parametrize(
    ("fast", "expected_rows", "expected_deep"),
    [
        (FastModes(), [2] * 6, 6),
        (FastModes(cfg_cutoff=0.5), [2, 2, 2, 1, 1, 1], 6),
        (FastModes(cfg_cutoff=0.0), [1] * 6, 6),
        (FastModes(deepcache=3), [2] * 6, 2),
        (FastModes(deepcache=2, cfg_cutoff=0.5), [2, 2, 2, 1, 1, 1], 3),
    ],
)
def test_cfg_cutoff_and_deepcache_cut_rows_and_whole_unet_calls(pipe, fast, expected_rows, expected_deep):
    rows, deep_calls, _, handles = unet_rows(pipe)
    try:
        generate(pipe, fast=fast)
    finally:
        for handle in handles:
            handle.remove()
    assert rows == expected_rows
    assert len(deep_calls) == expected_deep


def test_token_merging_halves_full_resolution_self_attention_and_leaves_no_hooks(pipe):
    rows, _, tokens, handles = unet_rows(pipe)
    try:
        generate(pipe)
        exact_tokens = list(tokens)
        tokens.clear()
        generate(pipe, fast=FastModes(tome=0.5))
    finally:
        for handle in handles:
            handle.remove()
    full = max(exact_tokens)
    assert full == (32 // pipe.vae.downscale_factor) ** 2
    assert tokens == [full // 2 if count == full else count for count in exact_tokens]
    blocks = [module for module in pipe.unet.modules() if isinstance(module, BasicTransformerBlock)]
    assert not pipe.unet._forward_pre_hooks
    assert not any(block._forward_pre_hooks or block.attn1._forward_hooks for block in blocks)


def test_merge_then_unmerge_restores_tokens_that_are_equal_within_each_cell():
    generator = torch.Generator().manual_seed(0)
    cells = torch.randn(2, 3, 4, 5)
    tokens = cells.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).reshape(2, 48, 5)
    plan = merge_plan(tokens, 6, 8, 0.75, generator)
    merged = plan.merge(tokens)
    assert merged.shape == (2, 48 - 36, 5)
    torch.testing.assert_close(plan.unmerge(merged), tokens)
    assert merge_plan(tokens, 6, 8, 0.01, generator) is None


def test_merge_averages_sources_into_their_destination():
    generator = torch.Generator().manual_seed(1)
    tokens = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.1], [4.0, 0.0]]])
    plan = merge_plan(tokens, 2, 2, 0.75, generator)
    merged = plan.merge(tokens)
    assert merged.shape == (1, 1, 2)
    torch.testing.assert_close(merged[0, 0], tokens[0].mean(dim=0))
    torch.testing.assert_close(plan.unmerge(merged), merged.expand(1, 4, 2))


def test_a_shallow_call_on_the_same_input_gives_the_whole_unets_output(pipe):
    unet = pipe.unet
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([500.0, 500.0])
    cond = Conditioning(torch.randn(2, 77, unet.config.context_dim))
    reuse = FeatureReuse()
    with torch.inference_mode():
        exact = unet(x, t, cond)
        torch.testing.assert_close(unet(x, t, cond, reuse), exact, rtol=0, atol=0)
        reuse.refresh = False
        torch.testing.assert_close(unet(x, t, cond, reuse), exact)
        first = Conditioning(cond.context[:1])
        torch.testing.assert_close(unet(x[:1], t[:1], first, reuse), exact[:1])
    assert (reuse.full_calls, reuse.shallow_calls) == (1, 2)


@pytest.mark.parametrize(
    ("fast", "message"),
    [
        ({"cfg_cutoff": 1.5}, "--cfg-cutoff"),
        ({"deepcache": 0}, "--deepcache"),
        ({"deepcache": 2.5}, "--deepcache"),
        ({"tome": 0.95}, "--tome"),
        ({"speed": 2}, "FastModes"),
    ],
)
def test_bad_values_are_refused_by_the_api(pipe, fast, message):
    with pytest.raises(InvalidArgumentError, match=message):
        generate(pipe, fast=fast)


def test_cli_flags_reach_the_png_and_from_png_reproduces(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = str(tiny_pipeline_folder("sd1"))
    common = ["--size", "32x32", "--steps", "6", "--seed", "5", "--model", model, "-q"]
    flags = ["--cfg-cutoff", "0.5", "--deepcache", "2", "--tome", "0.5"]
    assert main(["generate", "a red circle", *common, *flags, "-o", "fast.png"]) == 0
    assert main(["generate", "a red circle", *common, "-o", "exact.png"]) == 0
    parameters = read_parameters(Path("fast.png"))
    assert "CFG cutoff: 0.5, DeepCache interval: 2, Token merging ratio: 0.5" in parameters
    assert "CFG cutoff" not in read_parameters(Path("exact.png"))
    assert main(["generate", "--from-png", "fast.png", "--model", model, "-q", "-o", "again.png"]) == 0
    fast, again = Image.open("fast.png"), Image.open("again.png")
    assert again.tobytes() == fast.tobytes() != Image.open("exact.png").tobytes()
    overridden = ["generate", "--from-png", "fast.png", "--model", model, "-q", "--deepcache", "1"]
    assert main([*overridden, "-o", "override.png"]) == 0
    assert "DeepCache interval" not in read_parameters(Path("override.png"))
    capsys.readouterr()
    for bad, fragment in (("--deepcache", "0"), ("--cfg-cutoff", "-0.1"), ("--tome", "1")):
        assert main(["generate", "x", *common, bad, fragment, "-o", "bad.png"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and bad in err and "Traceback" not in err
    assert not Path("bad.png").exists()


def test_record_round_trips_the_modes():
    record = {"prompt": "x", "steps": 20, "cfg": 7.0, "seed": 1, "fast": FastModes(0.25, 4, 0.3).to_record()}
    assert parse_parameters(format_parameters(record))["fast"] == {
        "cfg_cutoff": 0.25,
        "deepcache": 4,
        "tome": 0.3,
    }
    assert parse_parameters("x\nSteps: 20, Seed: 1, CFG scale: 7")["fast"] == FastModes().to_record()


def test_small_cpu_work_runs_on_one_thread_and_the_count_comes_back():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with cpu_threads_for(torch.device("cpu"), 16 * 16, 64):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with cpu_threads_for(torch.device("cpu"), 64 * 64, 320):
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), cpu_threads_for(torch.device("cpu"), 8 * 8, 32):
            raise RuntimeError("interrupted")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
