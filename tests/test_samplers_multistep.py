"""Multistep, DPM-Solver, SDE and UniPC samplers against exact answers for Gaussian and mixture data."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from gaussian_oracle import (
    convergence_order,
    exact_ode_solution,
    gaussian_denoiser,
    mixture_denoiser,
    reference_solution,
)
from lienzo.diffusion import SeededNoise
from lienzo.diffusion.samplers import get_sampler
from lienzo.diffusion.samplers.multistep import lms_coefficient, sample_ipndm
from lienzo.diffusion.samplers.unipc import sample_uni_pc, unipc_step
from lienzo.errors import InvalidArgumentError

DIM = 64
MU = torch.linspace(-1.0, 1.0, DIM, dtype=torch.float64)
STD = torch.linspace(0.3, 1.5, DIM, dtype=torch.float64)
SIGMA_MAX, SIGMA_MIN = 20.0, 0.05
STEPS = (8, 16, 32, 64)


def karras_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0):
    """Karras et al. 2022 eq. 5 noise levels, without the trailing zero."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def start_points(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return SIGMA_MAX * torch.randn(
        batch, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )


def ode_errors(sampler, steps=STEPS, grid=karras_sigmas) -> list[float]:
    """Max abs error at the last noise level against the exact probability-flow ODE solution."""
    denoise, x_start = gaussian_denoiser(MU, STD), start_points()
    errors = []
    for n in steps:
        sigmas = grid(n)
        exact = exact_ode_solution(x_start, float(sigmas[0]), float(sigmas[-1]), MU, STD)
        errors.append((sampler(denoise, x_start.clone(), sigmas) - exact).abs().max().item())
    return errors


def deterministic(name: str, **options):
    return partial(get_sampler(name), **options)


ORDER_CASES = [
    ("dpm_2", {}, 1.8),
    ("lms", {}, 2.8),
    ("ipndm", {}, 1.9),
    ("dpmpp_2m", {}, 1.8),
    ("uni_pc", {}, 2.8),
    ("uni_pc_bh2", {}, 2.8),
    ("dpm_2_ancestral", {"eta": 0.0}, 1.8),
    ("dpmpp_2s_ancestral", {"eta": 0.0}, 1.8),
    ("dpmpp_sde", {"eta": 0.0}, 1.8),
    ("dpmpp_2m_sde", {"eta": 0.0}, 1.8),
    ("dpmpp_3m_sde", {"eta": 0.0}, 2.5),
]


@pytest.mark.parametrize(("name", "options", "min_order"), ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_ode_error_shrinks_at_expected_order(name, options, min_order):
    errors = ode_errors(deterministic(name, **options))
    order = convergence_order(STEPS, errors)
    assert order > min_order, (name, order, errors)
    assert errors[-1] < 5e-3, (name, errors)


def test_first_order_lms_is_euler_order():
    order = convergence_order(STEPS, ode_errors(deterministic("lms", order=1)))
    assert 0.8 < order < 1.3


def test_ipndm_higher_orders_cut_the_error_on_a_uniform_grid():
    """Each extra Adams-Bashforth term helps at a fixed step count; the Euler warm-up step caps the
    asymptotic order at 2, so the test compares orders at 16 steps rather than fitting a slope of 4."""

    def uniform(n):
        return torch.linspace(2.0, SIGMA_MIN, n, dtype=torch.float64)

    errors = [ode_errors(partial(sample_ipndm, order=k), steps=(16,), grid=uniform)[0] for k in (1, 2, 3, 4)]
    assert all(lower > 3 * higher for lower, higher in zip(errors, errors[1:], strict=False)), errors


@pytest.mark.parametrize("name", [name for name, _, _ in ORDER_CASES])
def test_sampling_to_zero_lands_near_the_data_solution(name):
    options = dict(next(o for n, o, _ in ORDER_CASES if n == name))
    denoise, x_start = gaussian_denoiser(MU, STD), start_points()
    sigmas = with_zero(karras_sigmas(32))
    out = get_sampler(name)(denoise, x_start.clone(), sigmas, **options)
    exact = exact_ode_solution(x_start, SIGMA_MAX, 0.0, MU, STD)
    assert torch.isfinite(out).all()
    assert (out - exact).abs().max().item() < 2e-2


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "uni_pc", "uni_pc_bh2"])
def test_final_step_to_zero_returns_the_clean_estimate(name):
    denoise, seen = gaussian_denoiser(MU, STD), []
    sigmas = with_zero(karras_sigmas(10))
    options = {"eta": 0.0} if "sde" in name else {}
    out = get_sampler(name)(denoise, start_points(), sigmas, callback=seen.append, **options)
    assert torch.equal(out, seen[-1]["denoised"])


def test_lms_integrates_its_polynomial_down_to_zero():
    steps = (8, 16, 32)
    denoise, x_start = gaussian_denoiser(MU, STD), start_points()
    exact = exact_ode_solution(x_start, SIGMA_MAX, 0.0, MU, STD)
    errors = [
        (get_sampler("lms")(denoise, x_start.clone(), with_zero(karras_sigmas(n))) - exact).abs().max().item()
        for n in steps
    ]
    assert convergence_order(steps, errors) > 2.5, errors


def test_lms_coefficients_integrate_polynomials_exactly():
    nodes = [3.0, 4.5, 7.0, 9.0]
    start, end = 3.0, 1.2
    weights = [lms_coefficient(nodes, j, start, end) for j in range(4)]
    for power in range(4):
        approx = sum(w * node**power for w, node in zip(weights, nodes, strict=True))
        assert approx == pytest.approx((end ** (power + 1) - start ** (power + 1)) / (power + 1), rel=1e-12)


def test_unipc_coefficients_reduce_to_known_cases():
    first = unipc_step(0.7, [], "bh2")
    assert first.predictor_rhos == () and first.corrector_rhos == (0.5,)
    assert first.decay == pytest.approx(math.exp(-0.7))
    second = unipc_step(0.7, [-0.8], "bh1")
    assert second.predictor_rhos == (0.5,)
    assert len(second.corrector_rhos) == 2
    third = unipc_step(0.5, [-1.0, -2.0], "bh2")
    assert len(third.predictor_rhos) == 2 and len(third.corrector_rhos) == 3


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_first_step_is_ddim_and_the_corrector_acts_after_it(variant):
    denoise, x_start = gaussian_denoiser(MU, STD), start_points()
    sigmas = karras_sigmas(3)
    one_step = sample_uni_pc(denoise, x_start.clone(), sigmas[:2], variant=variant)
    assert torch.allclose(one_step, get_sampler("dpmpp_2m")(denoise, x_start.clone(), sigmas[:2]), atol=1e-12)
    two_steps = sample_uni_pc(denoise, x_start.clone(), sigmas, variant=variant)
    assert not torch.allclose(two_steps, get_sampler("dpmpp_2m")(denoise, x_start.clone(), sigmas), atol=1e-6)


MIXTURE_WEIGHTS = (0.3, 0.5, 0.2)
MIXTURE_STDS = (0.2, 0.35, 0.25)


@pytest.fixture(scope="module")
def mixture_problem():
    """A three-component Gaussian mixture, start points at sigma 10, and an RK4 reference at sigma 0.05."""
    means = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    denoise = mixture_denoiser(MIXTURE_WEIGHTS, means, MIXTURE_STDS)
    x_start = 10.0 * torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return denoise, x_start, reference_solution(denoise, x_start, 10.0, 0.05, steps=200)


@pytest.mark.parametrize(("name", "bound"), [("dpmpp_2m", 2e-2), ("uni_pc", 4e-3), ("uni_pc_bh2", 4e-3)])
def test_mixture_of_gaussians_matches_reference_solution(mixture_problem, name, bound):
    denoise, x_start, reference = mixture_problem
    steps = (10, 20, 40)
    errors = [
        (get_sampler(name)(denoise, x_start.clone(), karras_sigmas(n, 0.05, 10.0)) - reference)
        .abs()
        .max()
        .item()
        for n in steps
    ]
    assert convergence_order(steps, errors) > 1.9, errors
    assert errors[-1] < bound, errors


STOCHASTIC = ["dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"]


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_reproduce_data_mean_and_variance(name):
    count, dim = 4096, 8
    mu = torch.linspace(-1, 1, dim, dtype=torch.float64)
    std = torch.linspace(0.2, 1.5, dim, dtype=torch.float64)
    noise = torch.randn(count, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_start = mu + torch.sqrt(std**2 + SIGMA_MAX**2) * noise
    sigmas = with_zero(karras_sigmas(60, sigma_min=0.02))
    out = get_sampler(name)(
        gaussian_denoiser(mu, std), x_start, sigmas, noise=SeededNoise(torch.Generator().manual_seed(1))
    )
    z_mean = (out.mean(0) - mu) / (std / math.sqrt(count))
    z_var = (out.var(0) - std**2) / (std**2 * math.sqrt(2 / (count - 1)))
    assert z_mean.abs().max() < 4.5 and z_var.abs().max() < 4.5, (z_mean, z_var)
    assert (z_mean**2).mean() < 3.0 and (z_var**2).mean() < 3.0, (z_mean, z_var)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_follow_the_seed(name):
    denoise, sigmas = gaussian_denoiser(MU, STD), with_zero(karras_sigmas(6))
    runs = [
        get_sampler(name)(
            denoise, start_points(), sigmas, noise=SeededNoise(torch.Generator().manual_seed(seed))
        )
        for seed in (3, 3, 4)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


@pytest.mark.parametrize(
    ("stochastic", "ode"),
    [("dpm_2_ancestral", "dpm_2"), ("dpmpp_2m_sde", "dpmpp_2m"), ("dpmpp_sde", "dpmpp_2s_ancestral")],
)
def test_zero_eta_removes_the_noise(stochastic, ode):
    denoise, sigmas = gaussian_denoiser(MU, STD), with_zero(karras_sigmas(8))
    quiet = get_sampler(stochastic)(
        denoise, start_points(), sigmas, eta=0.0, noise=SeededNoise(torch.Generator())
    )
    reference = get_sampler(ode)(
        denoise, start_points(), sigmas, **({"eta": 0.0} if "ancestral" in ode else {})
    )
    assert torch.allclose(quiet, reference, rtol=0, atol=1e-12)


def test_callback_reports_every_step_with_float_levels():
    seen = []
    sigmas = with_zero(karras_sigmas(5))
    get_sampler("uni_pc")(gaussian_denoiser(MU, STD), start_points(), sigmas, callback=seen.append)
    assert [e["i"] for e in seen] == list(range(5))
    assert seen[-1]["sigma_next"] == 0.0 and seen[0]["sigma"] == pytest.approx(SIGMA_MAX)
    assert set(seen[0]) == {"i", "x", "sigma", "sigma_next", "denoised"}


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("ipndm", {"order": 5}),
        ("lms", {"order": 0}),
        ("uni_pc", {"variant": "bh3"}),
        ("dpmpp_2m_sde", {"solver_type": "rk4"}),
    ],
)
def test_bad_options_raise_a_lienzo_error(name, options):
    with pytest.raises(InvalidArgumentError):
        get_sampler(name)(gaussian_denoiser(MU, STD), start_points(), with_zero(karras_sigmas(3)), **options)
