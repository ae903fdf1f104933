"""Parameterizations (eps, v, x0) and the Denoiser wrapping a UNet-like network."""

from __future__ import annotations

import pytest
import torch

from gaussian_oracle import eps_model, gaussian_denoiser
from lienzo.diffusion import (
    Conditioning,
    Denoiser,
    EpsPrediction,
    ModelSampling,
    VPrediction,
    X0Prediction,
    parameterization_for,
)
from lienzo.errors import InvalidArgumentError

diffusers = pytest.importorskip("diffusers")

PARAMETERIZATIONS = [EpsPrediction(), VPrediction(), X0Prediction(), VPrediction(sigma_data=0.5)]


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS, ids=repr)
def test_the_training_target_maps_back_to_x0(parameterization):
    torch.manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sigma = torch.tensor([0.03, 1.0, 14.6])
    x = x0 + sigma[:, None, None, None] * noise
    target = parameterization.target(x0, noise, sigma[:, None, None, None])
    assert torch.allclose(parameterization.denoised(x, target, sigma), x0, atol=1e-5)
    assert float(parameterization.loss(target, x0, noise, sigma)) < 1e-12
    assert float(parameterization.loss(target + 0.5, x0, noise, sigma)) == pytest.approx(0.25, rel=1e-5)


def test_v_target_matches_diffusers_velocity():
    torch.manual_seed(1)
    scheduler = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    timesteps = torch.tensor([5, 400, 999])
    x0, noise = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    theirs = scheduler.get_velocity(x0, noise, timesteps)
    sigma = ModelSampling.from_config().sigmas[timesteps].reshape(-1, 1, 1, 1)
    assert torch.allclose(VPrediction().target(x0, noise, sigma), theirs, atol=1e-5)


def test_edm_vp_scalings():
    sigma = torch.tensor([0.5, 2.0])
    eps, v = EpsPrediction().scalings(sigma), VPrediction().scalings(sigma)
    assert torch.allclose(eps.c_in, 1 / (sigma**2 + 1) ** 0.5)
    assert torch.allclose(eps.c_out, -sigma) and torch.equal(eps.c_skip, torch.ones(2))
    assert torch.allclose(v.c_skip, 1 / (sigma**2 + 1))
    assert torch.allclose(v.c_out, -sigma / (sigma**2 + 1) ** 0.5)


def test_parameterization_names():
    assert isinstance(parameterization_for("v_prediction"), VPrediction)
    assert isinstance(parameterization_for("eps"), EpsPrediction)
    with pytest.raises(InvalidArgumentError, match="eps, v, x0"):
        parameterization_for("flow")


def v_model(denoise, t_to_sigma):
    """A v-predicting network built from an exact denoiser."""

    def model(x_vp, t, cond=None):
        sigma = t_to_sigma(torch.as_tensor(t, dtype=torch.float64)).float().reshape(-1, 1, 1, 1)
        x = x_vp * (1 + sigma**2) ** 0.5
        x0 = denoise(x, sigma.reshape(-1))
        return ((x - x0) / sigma - sigma * x0) / (1 + sigma**2) ** 0.5

    return model


@pytest.mark.parametrize(
    ("parameterization", "network"), [(EpsPrediction(), eps_model), (VPrediction(), v_model)]
)
def test_denoiser_recovers_the_exact_posterior_mean(parameterization, network):
    model_sampling = ModelSampling.from_config()
    exact = gaussian_denoiser(0.2, 0.9)
    denoiser = Denoiser(network(exact, model_sampling.t_to_sigma), parameterization, model_sampling)
    torch.manual_seed(2)
    sigma = torch.tensor([0.0292, 0.8, 7.5, 14.6])
    x = 0.2 + 0.9 * torch.randn(4, 4, 8, 8) + sigma.reshape(-1, 1, 1, 1) * torch.randn(4, 4, 8, 8)
    out = denoiser(x, sigma, Conditioning(context=torch.zeros(4, 1, 8)))
    assert torch.allclose(out, exact(x, sigma), atol=2e-5)


def test_denoiser_feeds_the_network_scaled_input_and_timesteps():
    calls = []

    def network(x, t, cond):
        calls.append((x, t, cond))
        return torch.zeros_like(x)

    model_sampling = ModelSampling.from_config()
    denoiser = Denoiser(network, EpsPrediction(), model_sampling)
    x = torch.ones(2, 4, 2, 2)
    sigma = model_sampling.sigmas[[999, 500]]
    cond = Conditioning(context=torch.zeros(2, 77, 8), y=torch.ones(2, 16))
    assert torch.equal(denoiser(x, sigma, cond), x)
    x_in, t, received = calls[0]
    assert torch.allclose(x_in[:, 0, 0, 0], 1 / (1 + sigma**2) ** 0.5)
    assert torch.allclose(t, torch.tensor([999.0, 500.0]), atol=1e-3)
    assert received is cond


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS[:3], ids=repr)
def test_denoiser_loss_is_the_parameterization_loss_of_the_raw_output(parameterization):
    """Denoiser.loss noises x0 to sigma, runs the network as sampling does and scores its raw output."""
    model_sampling = ModelSampling.from_config()
    seen = {}

    def network(x, t, cond):
        seen["x"] = x
        return torch.sin(x) + t.reshape(-1, 1, 1, 1) / 1000

    denoiser = Denoiser(network, parameterization, model_sampling)
    torch.manual_seed(4)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sigma = model_sampling.sigmas[[10, 400, 900]]
    cond = Conditioning(context=torch.zeros(3, 77, 8))
    weights = torch.tensor([1.0, 0.5, 2.0])
    loss = denoiser.loss(x0, noise, sigma, cond, weights)
    x = x0 + sigma.reshape(-1, 1, 1, 1) * noise
    output = network(
        x * parameterization.scalings(sigma.reshape(-1, 1, 1, 1)).c_in, model_sampling.sigma_to_t(sigma), cond
    )
    expected = parameterization.loss(output, x0, noise, sigma, weights)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(parameterization.denoised(x, output, sigma), denoiser(x, sigma, cond))
    torch.testing.assert_close(parameterization.output_for(x, denoiser(x, sigma, cond), sigma), output)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS[:3], ids=repr)
def test_min_snr_weights_count_the_x0_error_at_most_gamma(parameterization):
    torch.manual_seed(2)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    x = x0 + sigma[:, None, None, None] * noise
    output = parameterization.target(x0, noise, sigma[:, None, None, None]) + 0.1 * torch.randn_like(x0)
    x0_error = ((parameterization.denoised(x, output, sigma) - x0) ** 2).flatten(1).mean(1)
    weights = parameterization.min_snr_weights(sigma, gamma=5.0)
    weighted = parameterization.loss(output, x0, noise, sigma, weights)
    snr = sigma**-2
    assert float(weighted) == pytest.approx(float((torch.clamp(snr, max=5.0) * x0_error).mean()), rel=1e-4)
    huge = parameterization.min_snr_weights(sigma, gamma=1e9)
    plain_x0_weights = {"EpsPrediction": snr, "VPrediction": snr + 1, "X0Prediction": torch.ones(3)}
    torch.testing.assert_close(huge * plain_x0_weights[type(parameterization).__name__], snr)
