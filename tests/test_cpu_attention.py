"""lienzo's bf16 CPU attention kernel: PyTorch's flash kernel's accuracy at every shape the models use
and at awkward ones, rows independent of the batch and the thread count, the dispatch rules, torch.compile,
the UNet and the CLI switch, and a clear warning where it cannot be built."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lienzo.cli import main
from lienzo.models import cpu_attention
from lienzo.models.attention import attention
from lienzo.models.conditioning import Conditioning
from lienzo.models.unet import UNetModel
from tiny_models import TINY_UNET

needs_kernel = pytest.mark.skipif(
    not cpu_attention.cpu_supports_kernel(), reason="the CPU lacks AVX-512 BF16"
)


def heads_view(batch: int, tokens: int, heads: int, dim: int, scale: float = 1.0) -> torch.Tensor:
    """A (batch, heads, tokens, dim) bf16 view of a (batch, tokens, heads, dim) tensor, as the models
    make q, k and v."""
    return (torch.randn(batch, tokens, heads, dim) * scale).bfloat16().transpose(1, 2)


def errors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[float, float, float, float]:
    """Largest and mean difference to float32 attention of lienzo's kernel and of PyTorch's flash."""
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    ours = (cpu_attention.attend(q, k, v).float() - reference).abs()
    flash = (F.scaled_dot_product_attention(q, k, v).float() - reference).abs()
    return ours.max().item(), flash.max().item(), ours.mean().item(), flash.mean().item()


SD_SHAPES = [
    (4096, 4096, 8, 40),
    (4096, 77, 8, 40),
    (1024, 1024, 8, 80),
    (256, 77, 8, 160),
    (1024, 1024, 10, 64),
    (4096, 4096, 1, 512),
    (64, 64, 4, 64),
]


@needs_kernel
@pytest.mark.parametrize(("queries", "keys", "heads", "dim"), SD_SHAPES)
def test_as_accurate_as_flash_at_the_models_shapes(queries, keys, heads, dim) -> None:
    torch.manual_seed(0)
    q = heads_view(2, queries, heads, dim, 2.0)
    k, v = heads_view(2, keys, heads, dim), heads_view(2, keys, heads, dim)
    ours_max, flash_max, ours_mean, flash_mean = errors(q, k, v)
    assert ours_max <= 1.25 * flash_max
    assert ours_mean <= 1.1 * flash_mean


@needs_kernel
@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 3),
    queries=st.integers(1, 70),
    keys=st.integers(1, 70),
    half_dim=st.integers(1, 40),
    contiguous=st.booleans(),
)
def test_as_accurate_as_flash_at_awkward_sizes(batch, heads, queries, keys, half_dim, contiguous) -> None:
    """Key counts that fill no 16-key group or pair, query counts that fill no tile, dims that fill no
    16-lane chunk, both memory layouts."""
    torch.manual_seed(batch * 1000 + queries * 10 + keys)
    dim = 2 * half_dim
    q, k, v = (heads_view(batch, n, heads, dim, s) for n, s in ((queries, 2.0), (keys, 1.0), (keys, 1.0)))
    if contiguous:
        q, k, v = (t.contiguous() for t in (q, k, v))
    ours_max, flash_max, _, _ = errors(q, k, v)
    assert ours_max <= max(1.25 * flash_max, 2**-8)


@needs_kernel
def test_rows_do_not_depend_on_the_batch_or_the_thread_count() -> None:
    torch.manual_seed(1)
    q, k, v = heads_view(3, 300, 4, 40, 2.0), heads_view(3, 300, 4, 40), heads_view(3, 300, 4, 40)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = cpu_attention.attend(q, k, v)
        torch.set_num_threads(max(2, threads))
        many_threads = cpu_attention.attend(q, k, v)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one_thread, many_threads)
    assert torch.equal(cpu_attention.attend(q[1:2], k[1:2], v[1:2]), many_threads[1:2])


@needs_kernel
def test_the_result_is_a_heads_view_of_token_major_memory() -> None:
    q = heads_view(2, 64, 4, 16)
    out = cpu_attention.attend(q, q, q)
    assert out.shape == (2, 4, 64, 16)
    assert out.transpose(1, 2).is_contiguous()


@needs_kernel
def test_attention_takes_it_only_for_bf16_cpu_inference() -> None:
    q = heads_view(1, 32, 2, 16)
    assert cpu_attention.applies(q, q, q)
    assert not cpu_attention.applies(q.float(), q.float(), q.float())
    odd = heads_view(1, 32, 2, 15)
    assert not cpu_attention.applies(odd, odd, odd)
    wide = heads_view(1, 8, 1, 514)
    assert not cpu_attention.applies(wide, wide, wide)
    assert not cpu_attention.applies(q[:0], q[:0], q[:0])
    trained = q.detach().requires_grad_(True)
    assert not cpu_attention.applies(trained, q, q)
    with torch.no_grad():
        assert cpu_attention.applies(trained, q, q)
    try:
        cpu_attention.set_cpu_attention(False)
        assert not cpu_attention.applies(q, q, q)
    finally:
        cpu_attention.set_cpu_attention(True)
    causal = attention(q, q, q, is_causal=True)
    torch.testing.assert_close(causal, F.scaled_dot_product_attention(q, q, q, is_causal=True))


@needs_kernel
def test_torch_compile_calls_the_kernel_as_one_operator_without_graph_breaks() -> None:
    def attend_twice(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention(q * 2, k, v) + 1

    q = heads_view(2, 64, 4, 16)
    with torch.inference_mode():
        explained = torch._dynamo.explain(attend_twice)(q, q, q)
        targets = [str(node.target) for graph in explained.graphs for node in graph.graph.nodes]
        compiled = torch.compile(attend_twice, backend="eager")(q, q, q)
        eager = cpu_attention.attend(q * 2, q, q) + 1
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert "lienzo.cpu_attention.default" in targets
    assert torch.equal(compiled, eager)


@needs_kernel
def test_the_unet_gives_the_same_output_within_bf16_rounding() -> None:
    torch.manual_seed(0)
    unet = UNetModel(TINY_UNET).eval().requires_grad_(False).bfloat16().to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=generator).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last)
    t = torch.tensor([999.0, 10.0])
    cond = Conditioning(context=torch.randn(2, 5, TINY_UNET.context_dim, generator=generator).bfloat16())
    try:
        with torch.inference_mode():
            ours = unet(x, t, cond).float()
            cpu_attention.set_cpu_attention(False)
            flash = unet(x, t, cond).float()
    finally:
        cpu_attention.set_cpu_attention(True)
    assert not torch.equal(ours, flash)
    torch.testing.assert_close(ours, flash, atol=4 * 2**-8 * flash.abs().max().item(), rtol=0)


def test_the_cli_switch_turns_it_off(tmp_path) -> None:
    try:
        off = ["--no-cpu-attention", "--steps", "1", "-q", "-o", str(tmp_path / "a.png")]
        assert main(["generate", "a red circle", *off]) == 0
        assert not cpu_attention.cpu_attention_enabled()
        assert main(["generate", "a red circle", "--steps", "1", "-q", "-o", str(tmp_path / "b.png")]) == 0
        assert cpu_attention.cpu_attention_enabled()
    finally:
        cpu_attention.set_cpu_attention(True)


def test_a_missing_compiler_is_one_clear_warning_and_pytorchs_kernel(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(cpu_attention, "cpu_supports_kernel", lambda: True)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cpu_attention.kernel_library.cache_clear()
    try:
        with pytest.warns(cpu_attention.SlowAttentionWarning, match="could not be built"):
            assert cpu_attention.kernel_library() is None
        q = heads_view(1, 32, 2, 16)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not cpu_attention.applies(q, q, q)
            torch.testing.assert_close(attention(q, q, q), F.scaled_dot_product_attention(q, q, q))
    finally:
        cpu_attention.kernel_library.cache_clear()


@needs_kernel
def test_the_build_is_cached_under_a_name_that_follows_the_source(tmp_path) -> None:
    compiler = cpu_attention.shutil.which("gcc") or cpu_attention.shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler")
    first = cpu_attention.build_library(compiler, tmp_path)
    modified = first.stat().st_mtime_ns
    assert cpu_attention.build_library(compiler, tmp_path) == first
    assert first.stat().st_mtime_ns == modified
    assert [path.name for path in tmp_path.iterdir()] == [first.name]
