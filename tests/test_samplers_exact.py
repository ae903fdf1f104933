"""Samplers against exact answers: Gaussian and Gaussian-mixture data with their optimal denoisers."""

from __future__ import annotations

import pytest
import torch

from gaussian_oracle import (
    consistency_function,
    convergence_order,
    exact_ode_solution,
    gaussian_denoiser,
    mixture_denoiser,
    reference_solution,
)
from lienzo.diffusion import SAMPLERS, SeededNoise, resolve_sampler, sample
from lienzo.diffusion.samplers import get_sampler
from lienzo.diffusion.sigma_schedules import karras_sigmas
from lienzo.errors import InvalidArgumentError

MU, STD = 0.5, 0.7
SIGMA_MAX, SIGMA_MIN = 80.0, 0.05
STEPS = (8, 16, 32, 64)
MIXTURE = ([0.4, 0.6], torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64), [0.6, 0.8])
MIXTURE_STEPS = (16, 32, 64, 128)
EXPECTED_ORDER = {"euler": 1.0, "ddim": 1.0, "heun": 2.0}


def ode_sigmas(steps: int) -> torch.Tensor:
    """Karras sigmas from SIGMA_MAX to SIGMA_MIN without the final 0, so every step is an ODE step."""
    return karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX)[:-1].double()


def rms(error: torch.Tensor) -> float:
    return float(error.pow(2).mean().sqrt())


def start_noise(n: int, dim: int = 1) -> torch.Tensor:
    return torch.randn((n, dim), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * SIGMA_MAX


def test_reference_solver_matches_the_exact_gaussian_flow():
    x_T = start_noise(64)
    exact = exact_ode_solution(x_T, SIGMA_MAX, SIGMA_MIN, MU, STD)
    reference = reference_solution(gaussian_denoiser(MU, STD), x_T, SIGMA_MAX, SIGMA_MIN, steps=500)
    assert float((reference - exact).abs().max()) < 1e-8


@pytest.mark.parametrize("name", sorted(EXPECTED_ORDER))
def test_deterministic_sampler_converges_at_its_order_on_gaussian_data(name):
    x_T = start_noise(256)
    exact = exact_ode_solution(x_T, SIGMA_MAX, SIGMA_MIN, MU, STD)
    errors = []
    for steps in STEPS:
        x = get_sampler(name)(gaussian_denoiser(MU, STD), x_T, ode_sigmas(steps))
        errors.append(float((x - exact).abs().max()))
    assert errors[-1] < errors[0]
    assert convergence_order(STEPS, errors) == pytest.approx(EXPECTED_ORDER[name], abs=0.25)


@pytest.fixture(scope="module")
def mixture_problem():
    """(denoiser, x_T, float64 RK4 reference solution at SIGMA_MIN) for the Gaussian mixture."""
    denoise = mixture_denoiser(*MIXTURE)
    x_T = start_noise(64, dim=2)
    return denoise, x_T, reference_solution(denoise, x_T, SIGMA_MAX, SIGMA_MIN, steps=300)


@pytest.mark.parametrize("name", sorted(EXPECTED_ORDER))
def test_deterministic_sampler_converges_at_its_order_on_a_mixture(name, mixture_problem):
    denoise, x_T, reference = mixture_problem
    sampler = get_sampler(name)
    errors = [rms(sampler(denoise, x_T, ode_sigmas(steps)) - reference) for steps in MIXTURE_STEPS]
    assert convergence_order(MIXTURE_STEPS, errors) == pytest.approx(EXPECTED_ORDER[name], abs=0.25)


def test_heun_on_full_schedules_to_zero_converges_to_the_exact_sample():
    x_T = start_noise(256)
    exact = exact_ode_solution(x_T, SIGMA_MAX, 0.0, MU, STD)
    steps = (32, 64, 128)
    errors = []
    for n in steps:
        sigmas = karras_sigmas(n, 0.002, SIGMA_MAX).double()
        x = get_sampler("heun")(gaussian_denoiser(MU, STD), x_T, sigmas)
        errors.append(float((x - exact).abs().max()))
    assert errors[-1] < 3e-3
    assert convergence_order(steps, errors) == pytest.approx(2.0, abs=0.25)


@pytest.mark.parametrize(
    ("name", "steps", "denoiser"),
    [
        ("euler_ancestral", 1000, gaussian_denoiser(MU, STD)),
        ("ddpm", 1000, gaussian_denoiser(MU, STD)),
        ("lcm", 4, consistency_function(MU, STD)),
    ],
)
def test_stochastic_sampler_reproduces_the_data_distribution(name, steps, denoiser):
    """Ancestral chains on the posterior mean converge with steps; LCM is exact given a consistency map."""
    n = 20_000
    generator = torch.Generator().manual_seed(11)
    x_T = torch.randn((n, 1), generator=generator, dtype=torch.float64) * (SIGMA_MAX**2 + STD**2) ** 0.5 + MU
    sigmas = karras_sigmas(steps, 0.002, SIGMA_MAX).double()
    x = get_sampler(name)(denoiser, x_T, sigmas, noise=SeededNoise(generator))
    assert float(x.mean()) == pytest.approx(MU, abs=4 * STD / n**0.5)
    assert float(x.var()) == pytest.approx(STD**2, rel=0.05)


def test_ancestral_ddim_and_ddpm_are_the_same_chain_as_euler_ancestral():
    x_T = start_noise(64)
    sigmas = karras_sigmas(10, 0.03, SIGMA_MAX).double()
    denoise = gaussian_denoiser(MU, STD)

    def run(name, **options):
        generator = torch.Generator().manual_seed(2)
        return get_sampler(name)(denoise, x_T, sigmas, noise=SeededNoise(generator), **options)

    ancestral = run("euler_ancestral")
    assert torch.allclose(run("ddim", eta=1.0), ancestral, atol=1e-10)
    assert torch.allclose(run("ddpm"), ancestral, atol=1e-10)
    assert torch.allclose(run("ddim"), run("euler"), atol=1e-10)


@pytest.mark.parametrize("name", ["euler_ancestral", "ddpm", "lcm", "euler"])
def test_seed_reproduces_stochastic_samples(name):
    x_T = start_noise(8)
    sigmas = karras_sigmas(6, 0.03, SIGMA_MAX)
    options = {"s_churn": 5.0} if name == "euler" else {}
    denoise = gaussian_denoiser(MU, STD)

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return get_sampler(name)(denoise, x_T, sigmas, noise=SeededNoise(generator), **options)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_callback_sees_every_step():
    seen = []
    sigmas = karras_sigmas(5, 0.03, SIGMA_MAX)
    sample(gaussian_denoiser(MU, STD), start_noise(4), sigmas, sampler="Heun", callback=seen.append)
    assert [step["i"] for step in seen] == list(range(5))
    assert seen[0]["sigma"] == pytest.approx(SIGMA_MAX)
    assert set(seen[0]) == {"i", "x", "sigma", "sigma_next", "denoised"}


def test_registry_lists_every_sampler_id():
    expected = {
        "euler", "euler_ancestral", "heun", "ddim", "ddpm", "lcm", "dpm_2", "dpm_2_ancestral", "lms",
        "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ipndm", "uni_pc",
    }  # fmt: skip
    assert expected <= set(SAMPLERS)
    assert all(callable(info.fn) and info.a1111_name != "" for info in SAMPLERS.values())


@pytest.mark.parametrize(
    ("name", "resolved"),
    [
        ("euler", ("euler", None)),
        ("Euler a", ("euler_ancestral", None)),
        ("DPM++ 2M Karras", ("dpmpp_2m", "karras")),
        ("DPM++ 3M SDE Exponential", ("dpmpp_3m_sde", "exponential")),
        ("DPM2 a Karras", ("dpm_2_ancestral", "karras")),
        ("PLMS", ("ipndm", None)),
        ("UniPC", ("uni_pc", None)),
        ("LMS", ("lms", None)),
        ("DDIM", ("ddim", None)),
    ],
)
def test_a1111_names_resolve_to_sampler_and_scheduler(name, resolved):
    assert resolve_sampler(name) == resolved


def test_unknown_sampler_names_the_valid_ones():
    with pytest.raises(InvalidArgumentError, match="euler_ancestral"):
        resolve_sampler("Euler b")


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_registry_metadata_says_which_samplers_draw_noise(name):
    """`stochastic` is True exactly for the samplers whose result follows the noise seed by default;
    `options` are the keywords the sampler takes, with their defaults."""
    info = SAMPLERS[name]
    x_T, sigmas = start_noise(8), karras_sigmas(6, 0.03, SIGMA_MAX)

    def run(seed):
        noise = {"noise": SeededNoise(torch.Generator().manual_seed(seed))} if info.takes_noise else {}
        return sample(gaussian_denoiser(MU, STD), x_T, sigmas, name, **noise)

    assert (not torch.equal(run(1), run(2))) == info.stochastic
    assert "noise" not in info.options and "callback" not in info.options
    if info.stochastic:
        assert info.takes_noise
    with pytest.raises(InvalidArgumentError, match=f"sampler {name} has no option"):
        sample(gaussian_denoiser(MU, STD), x_T, sigmas, name, warp_factor=9)
