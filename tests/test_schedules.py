"""Noise schedules, the sigma table, the seven sigma schedules and img2img starts."""

from __future__ import annotations

import math

import pytest
import torch

from lienzo.diffusion import (
    SCHEDULERS,
    ModelSampling,
    NoiseScheduleConfig,
    get_sigmas,
    img2img_sigmas,
    noise_latent,
    partial_denoise_sigmas,
)
from lienzo.diffusion.schedules import alphas_cumprod_for, make_betas
from lienzo.diffusion.sigma_schedules import beta_quantile, regularized_incomplete_beta
from lienzo.errors import InvalidArgumentError

diffusers = pytest.importorskip("diffusers")

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@pytest.fixture(scope="module")
def model_sampling() -> ModelSampling:
    return ModelSampling.from_config()


def test_sd_sigma_table_has_the_known_extremes(model_sampling):
    assert model_sampling.sigma_max == pytest.approx(14.6146, abs=1e-4)
    assert model_sampling.sigma_min == pytest.approx(0.0292, abs=1e-4)
    assert bool((model_sampling.sigmas.diff() > 0).all())


@pytest.mark.parametrize("schedule", SCHEDULERS)
@pytest.mark.parametrize("steps", [1, 7, 20, 30])
def test_every_schedule_is_decreasing_and_ends_in_zero(schedule, steps, model_sampling):
    sigmas = get_sigmas(schedule, steps, model_sampling)
    assert sigmas.dtype == torch.float32
    assert len(sigmas) == steps + 1
    assert sigmas[-1] == 0
    assert bool((sigmas.diff() < 0).all())
    assert float(sigmas[0]) <= model_sampling.sigma_max * (1 + 1e-6)


def test_karras_and_exponential_follow_their_formulas(model_sampling):
    lo, hi = model_sampling.sigma_min, model_sampling.sigma_max
    karras = get_sigmas("karras", 10, model_sampling).double()
    ramp = torch.linspace(0, 1, 10, dtype=torch.float64)
    expected = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    assert torch.allclose(karras[:-1], expected, rtol=1e-6)
    log_steps = get_sigmas("exponential", 10, model_sampling)[:-1].double().log().diff()
    assert torch.allclose(log_steps, torch.full_like(log_steps, (math.log(lo) - math.log(hi)) / 9), rtol=1e-5)


@pytest.mark.parametrize(
    ("schedule", "steps", "options"),
    [
        ("karras", 15, {"use_karras_sigmas": True}),
        ("exponential", 15, {"use_exponential_sigmas": True}),
        ("normal", 28, {"timestep_spacing": "linspace"}),
        ("simple", 20, {"timestep_spacing": "trailing"}),
    ],
)
def test_schedules_match_diffusers_where_definitions_coincide(schedule, steps, options, model_sampling):
    scheduler = diffusers.EulerDiscreteScheduler(**SD_BETAS, **options)
    scheduler.set_timesteps(steps)
    ours = get_sigmas(schedule, steps, model_sampling)
    assert torch.allclose(ours, scheduler.sigmas.float(), rtol=5e-5, atol=0)  # their table is float32


def test_ddim_uniform_uses_diffusers_leading_timesteps(model_sampling):
    scheduler = diffusers.DDIMScheduler(**SD_BETAS, steps_offset=1, timestep_spacing="leading")
    scheduler.set_timesteps(25)
    expected = model_sampling.sigmas[scheduler.timesteps.long()]
    assert torch.equal(get_sigmas("ddim_uniform", 25, model_sampling)[:-1], expected)


def test_sgm_uniform_leaves_out_timestep_zero(model_sampling):
    sigmas = get_sigmas("sgm_uniform", 4, model_sampling)
    expected_t = torch.tensor([999.0, 749.25, 499.5, 249.75], dtype=torch.float64)
    assert torch.allclose(model_sampling.sigma_to_t(sigmas[:-1].double()), expected_t, atol=1e-3)


def test_incomplete_beta_has_closed_forms():
    for x in (0.05, 0.3, 0.7, 0.95):
        assert regularized_incomplete_beta(x, 1, 1) == pytest.approx(x, abs=1e-12)
        assert regularized_incomplete_beta(x, 2, 1) == pytest.approx(x**2, abs=1e-12)
        arcsine_cdf = 2 / math.pi * math.asin(x**0.5)
        assert regularized_incomplete_beta(x, 0.5, 0.5) == pytest.approx(arcsine_cdf, abs=1e-12)
    assert beta_quantile(0.5, 0.6, 0.6) == pytest.approx(0.5, abs=1e-12)
    assert beta_quantile(0.2, 0.6, 0.6) == pytest.approx(1 - beta_quantile(0.8, 0.6, 0.6), abs=1e-12)


def test_beta_schedule_starts_at_the_top_and_follows_quantiles(model_sampling):
    sigmas = get_sigmas("beta", 10, model_sampling)
    assert float(sigmas[0]) == pytest.approx(model_sampling.sigma_max)
    t = round(beta_quantile(0.5, 0.6, 0.6) * 999)
    assert float(sigmas[5]) == float(model_sampling.sigmas[t])


def test_sigma_to_t_and_back(model_sampling):
    t = torch.tensor([0.0, 1.0, 37.25, 500.5, 998.9, 999.0], dtype=torch.float64)
    assert torch.allclose(model_sampling.sigma_to_t(model_sampling.t_to_sigma(t)), t, atol=1e-6)
    table_t = model_sampling.sigma_to_t(model_sampling.sigmas[[0, 10, 999]].double())
    assert torch.allclose(table_t, torch.tensor([0.0, 10.0, 999.0], dtype=torch.float64), atol=1e-6)


def test_zero_terminal_snr_reaches_zero_and_keeps_sigma_finite():
    config = NoiseScheduleConfig(zero_terminal_snr=True)
    alphas_cumprod = alphas_cumprod_for(config)
    assert alphas_cumprod[-1] == 0
    assert alphas_cumprod[0] == pytest.approx(alphas_cumprod_for(NoiseScheduleConfig())[0])
    model_sampling = ModelSampling.from_config(config)
    assert model_sampling.sigma_max == pytest.approx(4096, rel=1e-5)
    sigmas = get_sigmas("karras", 10, model_sampling)
    assert bool(torch.isfinite(sigmas).all()) and bool((sigmas.diff() < 0).all())
    theirs = diffusers.DDPMScheduler(**SD_BETAS, rescale_betas_zero_snr=True).alphas_cumprod.double()
    assert torch.allclose(alphas_cumprod, theirs, atol=1e-5)


@pytest.mark.parametrize(("ours", "theirs"), [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_beta_schedules_match_diffusers(ours, theirs):
    expected = diffusers.DDPMScheduler(beta_schedule=theirs).betas.double()
    assert torch.allclose(make_betas(ours, 1000, 0.0001, 0.02), expected, rtol=1e-5, atol=1e-7)


def test_unknown_schedule_and_bad_steps_are_user_errors(model_sampling):
    with pytest.raises(InvalidArgumentError, match="karras"):
        get_sigmas("karas", 10, model_sampling)
    with pytest.raises(InvalidArgumentError, match="positive"):
        get_sigmas("karras", 0, model_sampling)


def test_img2img_strength_picks_the_schedule_tail(model_sampling):
    sigmas = get_sigmas("karras", 20, model_sampling)
    assert torch.equal(img2img_sigmas(sigmas, 1.0), sigmas)
    assert torch.equal(img2img_sigmas(sigmas, 0.5), sigmas[10:])
    assert torch.equal(img2img_sigmas(sigmas, 0.0), sigmas[-1:])
    with pytest.raises(InvalidArgumentError):
        img2img_sigmas(sigmas, 1.5)


def test_img2img_noises_the_latent_to_the_first_sigma_of_the_tail(model_sampling):
    sigmas = get_sigmas("normal", 10, model_sampling)
    latent = torch.ones(2, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(9))
    tail = img2img_sigmas(sigmas, 0.6)
    assert len(tail) == 7
    assert torch.equal(noise_latent(latent, noise, float(tail[0])), latent + noise * float(tail[0]))
    assert torch.equal(noise_latent(None, noise, float(tail[0])), noise * float(tail[0]))
    per_row = torch.tensor([2.0, 0.0])
    rows = noise_latent(latent, noise, per_row)
    assert torch.equal(rows[0], latent[0] + 2.0 * noise[0]) and torch.equal(rows[1], latent[1])
    assert len(img2img_sigmas(sigmas, 0.0)) == 1


def test_partial_denoise_runs_exactly_the_requested_steps(model_sampling):
    sigmas = partial_denoise_sigmas("karras", 10, model_sampling, 0.5)
    assert len(sigmas) == 11
    assert torch.equal(sigmas, get_sigmas("karras", 20, model_sampling)[-11:])
