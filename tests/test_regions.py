"""Tier 1: conditioning lists in the denoiser layer (areas, strengths, sigma ranges) with a stub network."""

from __future__ import annotations

import math

import pytest
import torch

from lienzo.diffusion import Conditioning, ModelSampling, guided_denoiser
from lienzo.diffusion.regions import FEATHER, RegionalConditioning, percent_to_sigma, regional_denoiser


def constant_denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
    """Predicts, everywhere, the first number of the conditioning's context (one row per batch item)."""
    return cond.context[:, :1, :1, None].expand_as(x).clone() + 0 * x


def entry(value: float, **settings) -> RegionalConditioning:
    return RegionalConditioning(Conditioning(torch.full((1, 2, 3), value)), **settings)


X = torch.zeros(1, 4, 16, 32)
SIGMA = torch.tensor([2.0])


def test_overlapping_areas_average_by_weight_with_feathered_inner_edges():
    denoise = regional_denoiser(constant_denoiser, [entry(1.0), entry(3.0, area=(16, 16, 0, 16))], [], 1.0)
    out = denoise(X, SIGMA)
    assert torch.allclose(out[..., :16], torch.tensor(1.0))
    cells = min(FEATHER, 16 // 4)
    assert torch.allclose(out[..., 16 + cells :], torch.tensor(2.0))
    edge = 1 / cells
    assert torch.allclose(out[..., 16], torch.tensor((1 + 3 * edge) / (1 + edge)))
    assert torch.allclose(out[..., 17], torch.tensor((1 + 3 * 2 * edge) / (1 + 2 * edge)))


def test_strength_weights_the_average_and_uncovered_cells_predict_zero():
    left, right = entry(1.0, area=(16, 16, 0, 0), strength=3.0), entry(5.0, area=(16, 32, 0, 0))
    out = regional_denoiser(constant_denoiser, [left, right], [], 1.0)(X, SIGMA)
    assert torch.allclose(out[..., : 16 - 4], torch.tensor((3 * 1 + 5) / 4))
    alone = regional_denoiser(constant_denoiser, [entry(1.0, area=(8, 8, 0, 0))], [], 1.0)(X, SIGMA)
    assert torch.allclose(alone[..., 8:, :], torch.tensor(0.0)) and torch.allclose(
        alone[..., :4, :4], torch.tensor(1.0)
    )


def test_sigma_ranges_switch_entries_on_and_off():
    late = entry(7.0, sigma_range=(0.0, 1.0))
    denoise = regional_denoiser(constant_denoiser, [entry(1.0), late], [entry(0.0)], 2.0)
    assert torch.allclose(denoise(X, torch.tensor([5.0])), torch.tensor(2.0))
    assert torch.allclose(denoise(X, torch.tensor([0.5])), torch.tensor(8.0))


def test_plain_single_entries_are_exactly_the_batched_guided_denoiser():
    positive, negative = entry(2.0), entry(-1.0)
    x = torch.randn(2, 4, 8, 8)
    ours = regional_denoiser(constant_denoiser, [positive], [negative], 5.0)(x, SIGMA.expand(2))
    reference = guided_denoiser(constant_denoiser, positive.cond, negative.cond, 5.0)(x, SIGMA.expand(2))
    assert torch.equal(ours, reference)
    assert torch.allclose(ours, torch.tensor(-1 + 5 * 3.0))


def test_percent_to_sigma_runs_from_infinity_to_zero_on_the_timestep_axis():
    sampling = ModelSampling.from_config()
    values = [percent_to_sigma(sampling, p) for p in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert values[0] == math.inf and values[-1] == 0.0
    assert values[1] > values[2] > values[3] > 0
    assert values[1] <= sampling.sigma_max and values[3] >= sampling.sigma_min
    assert values[2] == pytest.approx(float(sampling.t_to_sigma(torch.tensor(499.5, dtype=torch.float64))))
