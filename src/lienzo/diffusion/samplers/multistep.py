"""Deterministic multistep and two-stage ODE samplers: DPM-Solver-2, LMS, iPNDM and DPM-Solver++(2M)."""

from __future__ import annotations

import math

import numpy as np
import torch

from lienzo.diffusion.samplers.common import (
    Callback,
    Denoise,
    NoiseSource,
    ancestral_step,
    denoise_at,
    gaussian_noise,
    report,
    sigma_list,
    to_d,
)
from lienzo.errors import InvalidArgumentError

ADAMS_BASHFORTH_COEFFICIENTS = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)
"""Fixed-step Adams-Bashforth weights, newest derivative first, for orders 1 to 4."""


def _dpm_2_step(denoise: Denoise, x: torch.Tensor, sigma: float, sigma_to: float, denoised: torch.Tensor):
    """One DPM-Solver-2 step in sigma, midpoint at the geometric mean; Euler when the target is 0."""
    d = to_d(x, sigma, denoised)
    if sigma_to == 0:
        return x + d * (sigma_to - sigma)
    sigma_mid = math.sqrt(sigma * sigma_to)
    x_mid = x + d * (sigma_mid - sigma)
    d_mid = to_d(x_mid, sigma_mid, denoise_at(denoise, x_mid, sigma_mid))
    return x + d_mid * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver-2 as in Karras et al. 2022 (Lu et al. 2022, Alg. 1 with r=1/2 in log sigma)."""
    levels = sigma_list(sigmas)
    for i in range(len(levels) - 1):
        denoised = denoise_at(denoise, x, levels[i])
        report(callback, i, x, levels[i], levels[i + 1], denoised)
        x = _dpm_2_step(denoise, x, levels[i], levels[i + 1], denoised)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource = gaussian_noise,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral DPM-Solver-2: a DPM-2 step to sigma_down, then fresh noise sigma_up (Lu et al. 2022)."""
    levels = sigma_list(sigmas)
    for i in range(len(levels) - 1):
        denoised = denoise_at(denoise, x, levels[i])
        report(callback, i, x, levels[i], levels[i + 1], denoised)
        sigma_down, sigma_up = ancestral_step(levels[i], levels[i + 1], eta)
        x = _dpm_2_step(denoise, x, levels[i], sigma_down, denoised)
        if levels[i + 1] > 0:
            x = x + noise(x) * (s_noise * sigma_up)
    return x


def lms_coefficient(nodes: list[float], j: int, start: float, end: float) -> float:
    """Integral over [start, end] of the Lagrange basis polynomial of `nodes[j]` (exact Gauss-Legendre)."""
    points, weights = np.polynomial.legendre.leggauss(max(len(nodes), 1))
    tau = 0.5 * (end - start) * points + 0.5 * (end + start)
    basis = np.ones_like(tau)
    for k, node in enumerate(nodes):
        if k != j:
            basis *= (tau - node) / (nodes[j] - node)
    return float(0.5 * (end - start) * np.dot(weights, basis))


@torch.no_grad()
def sample_lms(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    order: int = 4,
) -> torch.Tensor:
    """Linear multistep in sigma over the Lagrange interpolant of past dx/dsigma (Karras et al. 2022)."""
    if order < 1:
        raise InvalidArgumentError(f"lms order must be at least 1, got {order}; the usual choice is 4")
    levels = sigma_list(sigmas)
    derivatives: list[torch.Tensor] = []
    for i in range(len(levels) - 1):
        denoised = denoise_at(denoise, x, levels[i])
        report(callback, i, x, levels[i], levels[i + 1], denoised)
        derivatives = [to_d(x, levels[i], denoised), *derivatives][:order]
        nodes = levels[i - len(derivatives) + 1 : i + 1][::-1]
        for j, d in enumerate(derivatives):
            x = x + d * lms_coefficient(nodes, j, levels[i], levels[i + 1])
    return x


@torch.no_grad()
def sample_ipndm(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    order: int = 4,
) -> torch.Tensor:
    """Improved PNDM: Adams-Bashforth on dx/dsigma, lower-order warm-up (Zhang & Chen 2022, DEIS sec. 4)."""
    if not 1 <= order <= len(ADAMS_BASHFORTH_COEFFICIENTS):
        raise InvalidArgumentError(
            f"ipndm order must be 1 to {len(ADAMS_BASHFORTH_COEFFICIENTS)}, got {order}; pass 4 or lower"
        )
    levels = sigma_list(sigmas)
    derivatives: list[torch.Tensor] = []
    for i in range(len(levels) - 1):
        denoised = denoise_at(denoise, x, levels[i])
        report(callback, i, x, levels[i], levels[i + 1], denoised)
        derivatives = [to_d(x, levels[i], denoised), *derivatives][:order]
        weights = ADAMS_BASHFORTH_COEFFICIENTS[len(derivatives) - 1]
        slope = sum(w * d for w, d in zip(weights, derivatives, strict=True))
        x = x + slope * (levels[i + 1] - levels[i])
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), data prediction in lambda = -log sigma (Lu et al. 2022b, Algorithm 2)."""
    levels = sigma_list(sigmas)
    previous: torch.Tensor | None = None
    for i in range(len(levels) - 1):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = denoise_at(denoise, x, sigma)
        report(callback, i, x, levels[i], levels[i + 1], denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            estimate = denoised
            if previous is not None:
                ratio = math.log(levels[i - 1] / sigma) / h
                estimate = (1 + 1 / (2 * ratio)) * denoised - (1 / (2 * ratio)) * previous
            x = (sigma_next / sigma) * x - math.expm1(-h) * estimate
        previous = denoised
    return x
