"""Euler, Euler ancestral, Heun, DDIM, DDPM and LCM against diffusers' schedulers on the same eps model.

The model is the exact eps-predictor for Gaussian data (tests/gaussian_oracle.py) evaluated in the VP
input scaling diffusers uses, so both sides call the same function. Deterministic samplers are compared
on identical sigmas; stochastic ones are fed identical noise (both draw from CPU generators with the
same seed in the same order), so their trajectories must agree just as tightly.
"""

from __future__ import annotations

import pytest
import torch

from gaussian_oracle import eps_model, gaussian_denoiser
from lienzo.diffusion import (
    Conditioning,
    Denoiser,
    EpsPrediction,
    ModelSampling,
    SeededNoise,
    get_sigmas,
    guided_denoiser,
)
from lienzo.diffusion.samplers import get_sampler

diffusers = pytest.importorskip("diffusers")

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
SHAPE = (2, 4, 8, 8)
MU, STD = 0.3, 0.8


@pytest.fixture(scope="module")
def model_sampling() -> ModelSampling:
    return ModelSampling.from_config()


@pytest.fixture(scope="module")
def model(model_sampling):
    return eps_model(gaussian_denoiser(MU, STD), model_sampling.t_to_sigma)


def lienzo_denoise(model, model_sampling):
    denoiser = Denoiser(model, EpsPrediction(), model_sampling)
    return guided_denoiser(denoiser, Conditioning(context=torch.zeros(1, 1, 1)))


def initial_noise() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def run_diffusers_discrete(scheduler, model, x, generator=None) -> torch.Tensor:
    """The standard diffusers denoising loop over scheduler.timesteps."""
    for t in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(x, t), t)
        options = {} if generator is None else {"generator": generator}
        x = scheduler.step(eps, t, x, **options).prev_sample
    return x


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize(
    ("name", "scheduler_class"), [("euler", "EulerDiscreteScheduler"), ("heun", "HeunDiscreteScheduler")]
)
def test_deterministic_k_samplers_match_diffusers(name, scheduler_class, karras, model, model_sampling):
    scheduler = getattr(diffusers, scheduler_class)(**SD_BETAS, use_karras_sigmas=karras)
    scheduler.set_timesteps(12)
    their_sigmas = torch.unique_consecutive(scheduler.sigmas)  # Heun's table repeats each inner sigma
    if karras:
        ours = get_sigmas("karras", 12, model_sampling)
        assert torch.allclose(ours, their_sigmas.float(), rtol=5e-5, atol=0)  # float32 vs float64 tables
    noise = initial_noise()
    theirs = run_diffusers_discrete(scheduler, model, noise * scheduler.init_noise_sigma)
    sigmas = their_sigmas.float()
    ours = get_sampler(name)(lienzo_denoise(model, model_sampling), noise * sigmas[0], sigmas)
    assert relative_error(ours, theirs) < 1e-5


def test_euler_ancestral_matches_diffusers_with_identical_noise(model, model_sampling):
    scheduler = diffusers.EulerAncestralDiscreteScheduler(**SD_BETAS)
    scheduler.set_timesteps(10)
    noise = initial_noise()
    theirs = run_diffusers_discrete(
        scheduler, model, noise * scheduler.init_noise_sigma, torch.Generator().manual_seed(5)
    )
    sigmas = scheduler.sigmas.float()
    denoise = lienzo_denoise(model, model_sampling)
    generator = torch.Generator().manual_seed(5)
    ours = get_sampler("euler_ancestral")(denoise, noise * sigmas[0], sigmas, noise=SeededNoise(generator))
    assert relative_error(ours, theirs) < 1e-5


def run_diffusers_vp(scheduler, model, x_vp, generator=None, **step_options) -> torch.Tensor:
    """The diffusers loop for VP schedulers (DDIM, DDPM, LCM), which take no input scaling."""
    for t in scheduler.timesteps:
        step = scheduler.step(model(x_vp, t), t, x_vp, generator=generator, **step_options)
        x_vp = step.prev_sample
    return x_vp


def vp_sigmas(model_sampling, timesteps) -> torch.Tensor:
    """The table sigmas at the given timesteps, then 0 (the scheduler's last step lands on alpha = 1)."""
    return torch.cat([model_sampling.sigmas[timesteps.long()], torch.zeros(1)])


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(eta, model, model_sampling):
    scheduler = diffusers.DDIMScheduler(
        **SD_BETAS, clip_sample=False, set_alpha_to_one=True, steps_offset=1, timestep_spacing="leading"
    )
    scheduler.set_timesteps(20)
    sigmas = vp_sigmas(model_sampling, scheduler.timesteps)
    assert torch.equal(sigmas, get_sigmas("ddim_uniform", 20, model_sampling))
    noise = initial_noise()
    theirs = run_diffusers_vp(scheduler, model, noise, torch.Generator().manual_seed(3), eta=eta)
    ours = get_sampler("ddim")(
        lienzo_denoise(model, model_sampling),
        noise * (1 + sigmas[0] ** 2) ** 0.5,
        sigmas,
        noise=SeededNoise(torch.Generator().manual_seed(3)),
        eta=eta,
    )
    assert relative_error(ours, theirs) < 1e-5


def test_ddpm_matches_diffusers_with_identical_noise(model, model_sampling):
    scheduler = diffusers.DDPMScheduler(**SD_BETAS, clip_sample=False, variance_type="fixed_small")
    scheduler.set_timesteps(25)
    sigmas = vp_sigmas(model_sampling, scheduler.timesteps)
    noise = initial_noise()
    theirs = run_diffusers_vp(scheduler, model, noise, torch.Generator().manual_seed(4))
    ours = get_sampler("ddpm")(
        lienzo_denoise(model, model_sampling),
        noise * (1 + sigmas[0] ** 2) ** 0.5,
        sigmas,
        noise=SeededNoise(torch.Generator().manual_seed(4)),
    )
    assert relative_error(ours, theirs) < 1e-5


def test_lcm_matches_diffusers_with_identical_noise(model, model_sampling):
    scheduler = diffusers.LCMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(4)
    sigmas = vp_sigmas(model_sampling, scheduler.timesteps)
    noise = initial_noise()
    theirs = run_diffusers_vp(scheduler, model, noise, torch.Generator().manual_seed(6))
    ours = get_sampler("lcm")(
        lienzo_denoise(model, model_sampling),
        noise * (1 + sigmas[0] ** 2) ** 0.5,
        sigmas,
        noise=SeededNoise(torch.Generator().manual_seed(6)),
    )
    assert relative_error(ours, theirs) < 1e-5
