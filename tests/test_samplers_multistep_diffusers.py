"""Multistep, DPM-Solver and UniPC samplers against the diffusers schedulers (test-only oracle).

Both sides use one eps model built from the closed-form Gaussian denoiser, and the same noise levels. The
diffusers k-schedulers feed the model `x / sqrt(sigma^2 + 1)` and a timestep; the lienzo denoiser calls the
same model with the timestep diffusers used for that call, so `x0 = x - sigma * eps(x / sqrt(sigma^2+1), t)`.
"""

from __future__ import annotations

import math

import pytest
import torch

from gaussian_oracle import eps_model, exact_ode_solution, gaussian_denoiser
from lienzo.diffusion import SeededNoise, sample
from lienzo.diffusion.samplers import get_sampler

diffusers = pytest.importorskip("diffusers")

DIM = 32
MU = torch.linspace(-0.8, 0.8, DIM)
STD = torch.linspace(0.3, 1.2, DIM)
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def training_sigmas() -> torch.Tensor:
    """sqrt((1 - alphas_cumprod) / alphas_cumprod) of the SD 1.x training schedule, float64."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


LOG_SIGMAS = training_sigmas().log()


def timestep_to_sigma(t: torch.Tensor) -> torch.Tensor:
    """Log-linear interpolation of the training sigmas at (fractional) timesteps."""
    t = t.clamp(0, len(LOG_SIGMAS) - 1)
    low = t.floor().long().clamp(max=len(LOG_SIGMAS) - 2)
    frac = t - low
    return ((1 - frac) * LOG_SIGMAS[low] + frac * LOG_SIGMAS[low + 1]).exp()


MODEL = eps_model(gaussian_denoiser(MU, STD), timestep_to_sigma)


class RecordedModel:
    """The eps model, recording the timestep of every diffusers call so lienzo can replay them in order."""

    def __init__(self) -> None:
        self.timesteps: list[torch.Tensor] = []

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.timesteps.append(torch.as_tensor(t, dtype=torch.float64))
        return MODEL(x_in, t)

    def replay_denoiser(self):
        """A lienzo denoiser `x - sigma * eps(x / sqrt(sigma^2 + 1), t_k)` with t_k the k-th recorded step."""
        queue = list(self.timesteps)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
            return x - s * MODEL(x / torch.sqrt(s**2 + 1), queue.pop(0))

        denoise.remaining = queue
        return denoise


def initial_noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, DIM, generator=torch.Generator().manual_seed(seed))


def run_k_scheduler(scheduler, steps: int, noise_seed: int | None = None):
    """Drive a diffusers k-scheduler (sample x = x0 + sigma * eps); returns (final sample, recorded model)."""
    scheduler.set_timesteps(steps)
    model = RecordedModel()
    x = initial_noise() * scheduler.sigmas[0]
    seeded = {} if noise_seed is None else {"generator": torch.Generator().manual_seed(noise_seed)}
    for t in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, **seeded).prev_sample
    return x, model


def run_vp_scheduler(scheduler, steps: int, noise_seed: int | None = None):
    """Drive a diffusers VP-sample scheduler; returns the k-space trajectory before each step and the end."""
    scheduler.set_timesteps(steps)
    model = RecordedModel()
    sigmas = scheduler.sigmas.double()
    x = initial_noise()
    seeded = {} if noise_seed is None else {"generator": torch.Generator().manual_seed(noise_seed)}
    trajectory = []
    for i, t in enumerate(scheduler.timesteps):
        trajectory.append(x * math.sqrt(1 + float(sigmas[i]) ** 2))
        x = scheduler.step(model(x, t), t, x, **seeded).prev_sample
    return trajectory, x, model, sigmas


def run_lienzo(
    name: str, model: RecordedModel, sigmas: torch.Tensor, noise_seed=None, vp_start=False, **options
):
    """Run a lienzo sampler from the diffusers start: noise * sigma, or VP noise * sqrt(1 + sigma^2)."""
    denoise = model.replay_denoiser()
    seen = []
    noise = None if noise_seed is None else SeededNoise(torch.Generator().manual_seed(noise_seed))
    sigma = float(sigmas[0])
    x_start = initial_noise() * (math.sqrt(1 + sigma**2) if vp_start else sigma)
    out = sample(denoise, x_start, sigmas.float(), name, noise=noise, callback=seen.append, **options)
    assert denoise.remaining == [], "lienzo made fewer model calls than diffusers"
    return out, [step["x"] for step in seen]


def max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("karras", [False, True])
def test_dpm_2_matches_kdpm2(karras):
    scheduler = diffusers.KDPM2DiscreteScheduler(**SD_BETAS, use_karras_sigmas=karras)
    expected, model = run_k_scheduler(scheduler, 12)
    out, _ = run_lienzo("dpm_2", model, scheduler.sigmas[::2])
    assert max_relative(out, expected) < 2e-5


@pytest.mark.parametrize("karras", [False, True])
def test_dpm_2_ancestral_matches_kdpm2_ancestral_with_the_same_seed(karras):
    scheduler = diffusers.KDPM2AncestralDiscreteScheduler(**SD_BETAS, use_karras_sigmas=karras)
    expected, model = run_k_scheduler(scheduler, 12, noise_seed=7)
    out, _ = run_lienzo("dpm_2_ancestral", model, scheduler.sigmas[::2], noise_seed=7)
    assert max_relative(out, expected) < 2e-5


@pytest.mark.parametrize("karras", [False, True])
def test_lms_matches_lms_discrete(karras):
    pytest.importorskip(
        "scipy", reason="diffusers' LMSDiscreteScheduler integrates its coefficients with scipy"
    )
    scheduler = diffusers.LMSDiscreteScheduler(**SD_BETAS, use_karras_sigmas=karras)
    expected, model = run_k_scheduler(scheduler, 15)
    out, _ = run_lienzo("lms", model, scheduler.sigmas)
    assert max_relative(out, expected) < 2e-5


MULTISTEP_CASES = [
    ("dpmpp_2m", {"algorithm_type": "dpmsolver++"}, {}),
    ("dpmpp_2m_sde", {"algorithm_type": "sde-dpmsolver++"}, {}),
    ("dpmpp_2m_sde", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, {"solver_type": "heun"}),
]


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize(("name", "config", "options"), MULTISTEP_CASES, ids=["2m", "2m_sde", "2m_sde_heun"])
def test_dpmpp_multistep_matches_dpmsolver_multistep(name, config, options, karras):
    """20 steps: below 15 diffusers also drops the second-to-last step to first order; lienzo never does."""
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **SD_BETAS, solver_order=2, use_karras_sigmas=karras, final_sigmas_type="zero", **config
    )
    trajectory, expected, model, sigmas = run_vp_scheduler(scheduler, 20, noise_seed=3)
    out, lienzo_trajectory = run_lienzo(name, model, sigmas, noise_seed=3, vp_start=True, **options)
    for theirs, ours in zip(trajectory, lienzo_trajectory, strict=True):
        assert max_relative(ours, theirs) < 2e-5
    assert max_relative(out, expected) < 2e-5


@pytest.mark.parametrize(("variant", "order"), [("bh2", 2), ("bh1", 2), ("bh2", 3), ("bh1", 3)])
@pytest.mark.parametrize("karras", [False, True])
def test_uni_pc_matches_unipc_multistep(variant, order, karras):
    """diffusers corrects the sample inside the next `step` (kept as `last_sample`), lienzo right after the
    model call, so the corrected points are compared. diffusers' bh1 final step to sigma 0 multiplies
    B(h) = -inf by 0 and returns NaN; lienzo returns the clean estimate there, so bh1 compares up to it."""
    scheduler = diffusers.UniPCMultistepScheduler(
        **SD_BETAS,
        solver_order=order,
        solver_type=variant,
        use_karras_sigmas=karras,
        final_sigmas_type="zero",
    )
    scheduler.set_timesteps(12)
    model, sigmas = RecordedModel(), scheduler.sigmas.double()
    x, corrected = initial_noise(), []
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(model(x, t), t, x).prev_sample
        corrected.append(scheduler.last_sample * math.sqrt(1 + float(sigmas[i]) ** 2))
    out, lienzo_trajectory = run_lienzo("uni_pc", model, sigmas, vp_start=True, order=order, variant=variant)
    for theirs, ours in zip(corrected, lienzo_trajectory, strict=True):
        assert max_relative(ours, theirs) < 2e-5
    if variant == "bh2":
        assert max_relative(out, x) < 2e-5
    else:
        assert torch.isnan(x).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("karras", [False, True])
def test_dpmpp_sde_matches_dpmsolver_sde_with_noise_scaled_to_zero(karras):
    """diffusers draws this sampler's noise from a torchsde Brownian tree, lienzo from seeded Gaussian
    increments, so the two agree only on the deterministic skeleton: s_noise = 0 on both sides."""
    pytest.importorskip("torchsde", reason="diffusers' DPMSolverSDEScheduler needs torchsde")
    scheduler = diffusers.DPMSolverSDEScheduler(**SD_BETAS, use_karras_sigmas=karras, noise_sampler_seed=0)
    scheduler.set_timesteps(10)
    model = RecordedModel()
    x = initial_noise() * scheduler.sigmas[0]
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, s_noise=0.0).prev_sample
    levels = torch.cat([scheduler.sigmas[::2], scheduler.sigmas[-1:]])
    out, _ = run_lienzo("dpmpp_sde", model, levels, s_noise=0.0)
    assert max_relative(out, x) < 2e-5


def test_ipndm_and_pndm_both_converge_to_the_exact_ode_solution():
    """PNDM (PLMS with its own discrete-time transfer) and iPNDM (Adams-Bashforth in sigma with an Euler
    warm-up) are different algorithms, so only their shared limit is compared: the exact ODE solution."""
    errors_pndm, errors_ipndm = [], []
    for steps in (10, 20, 40):
        scheduler = diffusers.PNDMScheduler(**SD_BETAS, skip_prk_steps=True, set_alpha_to_one=True)
        scheduler.set_timesteps(steps)
        first_t = scheduler.timesteps[0].double()
        sigma_start = float(timestep_to_sigma(first_t.reshape(1)))
        x_vp = initial_noise()
        x_start = x_vp.double() * math.sqrt(1 + sigma_start**2)
        exact = exact_ode_solution(x_start, sigma_start, 0.0, MU.double(), STD.double())
        for t in scheduler.timesteps:
            x_vp = scheduler.step(MODEL(x_vp, t), t, x_vp).prev_sample
        errors_pndm.append((x_vp.double() - exact).abs().max().item())

        sigmas = timestep_to_sigma(torch.linspace(float(first_t), 0, steps, dtype=torch.float64))
        denoise = gaussian_denoiser(MU.double(), STD.double())
        out = get_sampler("ipndm")(denoise, x_start, torch.cat([sigmas, sigmas.new_zeros(1)]))
        errors_ipndm.append((out - exact).abs().max().item())
    for errors in (errors_pndm, errors_ipndm):
        assert errors[0] > errors[1] > errors[2], (errors_pndm, errors_ipndm)
        assert errors[2] < 0.05 * errors[0], (errors_pndm, errors_ipndm)
