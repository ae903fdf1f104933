"""Classifier-free guidance: batching, the cfg == 1 fast path, rescale and the sigma interval."""

from __future__ import annotations

import pytest
import torch

from lienzo.diffusion import (
    Conditioning,
    ControlResiduals,
    Denoiser,
    EpsPrediction,
    ModelSampling,
    concat_conditionings,
    guided_denoiser,
)
from lienzo.diffusion.guidance import rescale_guidance
from lienzo.errors import InvalidArgumentError


class AttentionNetwork:
    """A tiny cross-attention network that records the batch and token count of every call."""

    def __init__(self):
        torch.manual_seed(0)
        self.query = torch.randn(4, 8)
        self.calls: list[tuple[int, int]] = []

    def __call__(self, x, t, cond):
        context = cond.context
        self.calls.append((x.shape[0], context.shape[1]))
        q = torch.einsum("bchw,cd->bhwd", x, self.query)
        attention = torch.softmax(torch.einsum("bhwd,bld->bhwl", q, context), dim=-1)
        out = torch.einsum("bhwl,bld->bhwd", attention, context)[..., :4].permute(0, 3, 1, 2)
        return out * (1 + t.reshape(-1, 1, 1, 1) / 1000)


@pytest.fixture
def setup():
    network = AttentionNetwork()
    denoiser = Denoiser(network, EpsPrediction(), ModelSampling.from_config())
    torch.manual_seed(1)
    cond = Conditioning(context=torch.randn(1, 77, 8))
    uncond = Conditioning(context=torch.randn(1, 77, 8))
    x = torch.randn(3, 4, 4, 4) * 5
    sigma = torch.full((3,), 5.0)
    return network, denoiser, cond, uncond, x, sigma


def test_cfg_one_runs_a_single_conditional_pass(setup):
    network, denoiser, cond, uncond, x, sigma = setup
    out = guided_denoiser(denoiser, cond, uncond, cfg_scale=1.0)(x, sigma)
    assert network.calls == [(3, 77)]
    assert torch.allclose(out, denoiser(x, sigma, Conditioning(cond.context.expand(3, -1, -1))))


def test_cfg_batches_cond_and_uncond_in_one_call(setup):
    network, denoiser, cond, uncond, x, sigma = setup
    out = guided_denoiser(denoiser, cond, uncond, cfg_scale=7.5)(x, sigma)
    assert network.calls == [(6, 77)]
    cond_x0 = denoiser(x, sigma, Conditioning(cond.context.expand(3, -1, -1)))
    uncond_x0 = denoiser(x, sigma, Conditioning(uncond.context.expand(3, -1, -1)))
    assert torch.allclose(out, uncond_x0 + 7.5 * (cond_x0 - uncond_x0), atol=1e-5)


def test_different_token_counts_are_tiled_without_changing_the_result(setup):
    network, denoiser, cond, _, x, sigma = setup
    long_uncond = Conditioning(context=torch.randn(1, 154, 8))
    out = guided_denoiser(denoiser, cond, long_uncond, cfg_scale=3.0)(x, sigma)
    assert network.calls == [(6, 154)]
    cond_x0 = denoiser(x, sigma, Conditioning(cond.context.expand(3, -1, -1)))
    uncond_x0 = denoiser(x, sigma, Conditioning(long_uncond.context.expand(3, -1, -1)))
    assert torch.allclose(out, uncond_x0 + 3.0 * (cond_x0 - uncond_x0), atol=1e-5)


def test_rescale_zero_is_plain_cfg_and_one_matches_the_conditional_std(setup):
    _, denoiser, cond, uncond, x, sigma = setup
    plain = guided_denoiser(denoiser, cond, uncond, cfg_scale=7.0)(x, sigma)
    no_rescale = guided_denoiser(denoiser, cond, uncond, cfg_scale=7.0, guidance_rescale=0.0)
    assert torch.equal(no_rescale(x, sigma), plain)
    full = guided_denoiser(denoiser, cond, uncond, cfg_scale=7.0, guidance_rescale=1.0)(x, sigma)
    cond_x0 = denoiser(x, sigma, Conditioning(cond.context.expand(3, -1, -1)))
    v_scale = -5.0 / (1 + 25.0) ** 0.5

    def v_std(x0):
        return ((x0 - x / 26.0) / v_scale).std(dim=(1, 2, 3))

    assert torch.allclose(v_std(full), v_std(cond_x0), rtol=1e-4)
    assert not torch.allclose(full, plain)
    half = rescale_guidance(x, plain, cond_x0, sigma, 0.5)
    assert torch.allclose(half, (full + plain) / 2, atol=1e-4)


def test_guidance_is_off_outside_the_sigma_interval(setup):
    network, denoiser, cond, uncond, x, _ = setup
    guided = guided_denoiser(denoiser, cond, uncond, cfg_scale=5.0, sigma_interval=(0.3, 3.0))
    guided(x, torch.full((3,), 5.0))
    guided(x, torch.full((3,), 1.0))
    guided(x, torch.full((3,), 0.1))
    assert network.calls == [(3, 77), (6, 77), (3, 77)]


def test_guidance_needs_an_unconditional_input():
    denoiser = Denoiser(AttentionNetwork(), EpsPrediction(), ModelSampling.from_config())
    with pytest.raises(InvalidArgumentError, match="unconditional"):
        guided_denoiser(denoiser, Conditioning(torch.zeros(1, 77, 8)), None, cfg_scale=7.0)
    with pytest.raises(InvalidArgumentError, match="guidance_rescale"):
        guided_denoiser(denoiser, Conditioning(torch.zeros(1, 77, 8)), None, guidance_rescale=2.0)


def test_cfg_batches_every_kind_of_conditioning_in_one_pass():
    """context (token counts tiled), y, extra channels and control residuals all reach the network as
    cond rows then uncond rows, each repeated to the batch."""
    seen = []

    def network(x, t, cond):
        seen.append(cond)
        return torch.zeros_like(x)

    def conditioning(value: float, tokens: int) -> Conditioning:
        control = ControlResiduals((torch.full((1, 2, 4, 4), value),), torch.full((1, 2, 2, 2), -value))
        return Conditioning(
            torch.full((1, tokens, 8), value),
            torch.full((1, 5), value),
            torch.full((1, 1, 4, 4), value),
            control,
        )

    denoiser = Denoiser(network, EpsPrediction(), ModelSampling.from_config())
    guided = guided_denoiser(denoiser, conditioning(1.0, 77), conditioning(2.0, 154), cfg_scale=3.0)
    guided(torch.zeros(3, 4, 4, 4), torch.full((3,), 1.0))
    (cond,) = seen
    expected_rows = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    assert cond.context.shape == (6, 154, 8)
    for tensor in (cond.context, cond.y, cond.concat, cond.control.skips[0], -cond.control.middle):
        assert torch.equal(tensor.flatten(1)[:, 0], expected_rows)
    with pytest.raises(InvalidArgumentError, match="concat"):
        concat_conditionings(conditioning(1.0, 77), Conditioning(torch.zeros(1, 77, 8), torch.zeros(1, 5)), 1)
