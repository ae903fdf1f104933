"""Tiled VAE decode and encode: tile layout, blend weights, closeness to the whole run, no seams, wiring."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import lienzo
from lienzo.errors import InvalidArgumentError
from lienzo.models.vae import AutoencoderKL, VAEConfig
from lienzo.models.vae_tiling import blend_weights, decode_tiled, encode_tiled, run_tiled, tile_starts
from lienzo.pipelines import steps
from tiny_models import randomize_parameters, tiny_pipeline_folder

TILE, OVERLAP = 24, 8


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    """A tiny VAE (2 pixels per latent cell) with every parameter random, as in test_vae."""
    model = AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8)).eval()
    randomize_parameters(model, seed=0)
    return model


def latents(height: int, width: int) -> torch.Tensor:
    return torch.randn(1, 4, height, width, generator=torch.Generator().manual_seed(1))


def test_tiles_cover_the_length_evenly_with_at_least_the_overlap():
    assert tile_starts(64, 64, 16) == [0]
    assert tile_starts(20, 64, 16) == [0]
    assert tile_starts(200, 64, 16) == [0, 45, 91, 136]
    for length in range(65, 400, 7):
        starts = tile_starts(length, 64, 16)
        assert starts[0] == 0 and starts[-1] + 64 == length
        assert all(16 <= 64 - (after - before) < 64 for before, after in itertools.pairwise(starts))
        assert 64 + (len(starts) - 2) * (64 - 16) < length
    with pytest.raises(InvalidArgumentError, match="overlap"):
        tile_starts(100, 16, 16)


def test_blend_weights_ramp_linearly_and_sum_to_one_everywhere():
    starts = tile_starts(56, TILE, OVERLAP)
    weights = blend_weights(starts, TILE, 56, 2)
    total = torch.zeros(112, dtype=torch.float64)
    for start, weight in zip(starts, weights, strict=True):
        total[2 * start : 2 * (start + TILE)] += weight
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)
    first_overlap = weights[1][: 2 * (TILE - starts[1])]
    assert torch.all(first_overlap.diff() > 0) and torch.allclose(
        first_overlap.diff(), first_overlap.diff()[0]
    )


def test_a_local_operation_run_in_tiles_equals_the_whole_run():
    upsample = lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest")  # noqa: E731
    x = latents(40, 56)
    torch.testing.assert_close(run_tiled(upsample, x, TILE, OVERLAP, 1, 2), upsample(x), rtol=0, atol=1e-6)


def test_a_latent_within_one_tile_decodes_exactly_as_a_whole(vae):
    with torch.inference_mode():
        small = latents(16, 24)
        assert torch.equal(decode_tiled(vae, small, tile=TILE, overlap=OVERLAP), vae.decode(small))
        pixels = vae.decode(small).clamp(-1, 1)
        assert torch.equal(
            encode_tiled(vae, pixels, tile=TILE, overlap=OVERLAP).mean, vae.encode(pixels).mean
        )


def test_tiled_decode_stays_close_to_the_whole_and_shows_no_seams(vae):
    x = latents(40, 56)
    with torch.inference_mode():
        whole, tiled = vae.decode(x), decode_tiled(vae, x, tile=TILE, overlap=OVERLAP)
    error = tiled - whole
    # Each tile normalizes (GroupNorm) and attends (mid-block attention) over itself only, so on random
    # weights the tiled decode differs from the whole one everywhere, not only near tile edges: measured
    # mean |error| 0.045 and max 0.33 against a pixel std of 0.74. The bounds leave about 2x margin.
    assert error.abs().mean() < 0.12 * whole.std()
    assert error.abs().max() < 0.25 * whole.abs().max()
    # A seam shows as larger error along the lines where a tile starts or ends (a tile's own border is
    # where it sees least context). The ramps give those pixels to the neighbouring tile, so the mean
    # error along every tile-edge line (2 px wide) is no larger than along the worst line elsewhere; a
    # tile pasted over its neighbour without ramps fails this (0.43 against 0.31).
    for axis, length in ((-1, 56), (-2, 40)):
        starts = tile_starts(length, TILE, OVERLAP)
        edges = [2 * start + offset for start in starts[1:] for offset in (0, 1)]
        edges += [2 * (start + TILE) - offset for start in starts[:-1] for offset in (1, 2)]
        line_error = error.abs().mean(dim=(0, 1, -1 if axis == -2 else -2))
        elsewhere = torch.ones_like(line_error, dtype=torch.bool)
        elsewhere[edges] = False
        assert line_error[edges].max() <= line_error[elsewhere].max()


def test_tiled_encode_stays_close_to_the_whole(vae):
    with torch.inference_mode():
        pixels = vae.decode(latents(40, 56)).clamp(-1, 1)
        whole = vae.encode(pixels).mean
        tiled = encode_tiled(vae, pixels, tile=TILE, overlap=OVERLAP).mean
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().mean() < 0.12 * whole.std()


@pytest.mark.parametrize(
    ("setting", "auto_cells", "expect_tiled"),
    [(True, 16384, True), (False, 1, False), (None, 16384, False), (None, 191, True)],
)
def test_decode_and_encode_follow_the_tiling_setting(monkeypatch, setting, auto_cells, expect_tiled):
    """None tiles latents with more than AUTO_TILING_CELLS cells (here 12x16 = 192)."""
    vae = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32).vae
    monkeypatch.setattr(steps, "AUTO_TILING_CELLS", auto_cells)
    calls = []

    def recording(function):
        def run(vae, tensor):
            calls.append(function.__name__)
            return function(vae, tensor, tile=8, overlap=2)

        return run

    monkeypatch.setattr(steps, "decode_tiled", recording(decode_tiled))
    monkeypatch.setattr(steps, "encode_tiled", recording(encode_tiled))
    images = steps.decode_latents(vae, latents(12, 16), setting)
    assert images[0].size == (32, 24)
    assert steps.encode_images(vae, images, setting).shape == (1, 4, 12, 16)
    assert calls == (["decode_tiled", "encode_tiled"] if expect_tiled else [])
