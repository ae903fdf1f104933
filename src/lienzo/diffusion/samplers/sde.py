"""Stochastic DPM-Solver++ samplers (Lu et al. 2022b) driven by seeded Gaussian increments.

The Brownian motion is built from plain Gaussian draws of the noise source (no torchsde, no Brownian tree),
so the same seeds give the same sample on every device.
"""

from __future__ import annotations

import math

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


def _data_prediction_step(x: torch.Tensor, sigma: float, sigma_to: float, estimate: torch.Tensor):
    """First-order DPM-Solver++ (DDIM) step from sigma to sigma_to toward the clean estimate."""
    return (sigma_to / sigma) * x - math.expm1(-math.log(sigma / sigma_to)) * estimate


def _sde_noise_scale(sigma_next: float, h: float, eta: float, s_noise: float) -> float:
    """Noise std of an SDE-DPM-Solver++ step: sigma_next * sqrt(1 - exp(-2 eta h)) (Lu et al. 2022b)."""
    return sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource = gaussian_noise,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral DPM-Solver++(2S): midpoint step to sigma_down, noise sigma_up (Lu et al. 2022b, Alg. 1)."""
    levels = sigma_list(sigmas)
    for i in range(len(levels) - 1):
        sigma = levels[i]
        denoised = denoise_at(denoise, x, sigma)
        report(callback, i, x, levels[i], levels[i + 1], denoised)
        sigma_down, sigma_up = ancestral_step(sigma, levels[i + 1], eta)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            sigma_mid = math.sqrt(sigma * sigma_down)
            x_mid = _data_prediction_step(x, sigma, sigma_mid, denoised)
            x = _data_prediction_step(x, sigma, sigma_down, denoise_at(denoise, x_mid, sigma_mid))
        if levels[i + 1] > 0:
            x = x + noise(x) * (s_noise * sigma_up)
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource = gaussian_noise,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> torch.Tensor:
    """DPM-Solver++ SDE, two stages at lambda fraction r (Lu et al. 2022b, sec. 5 with SDE-DPM-Solver noise).

    The Brownian increments over [sigma_mid, sigma] and [sigma_next, sigma] share their overlap: the second is
    the first plus an independent seeded draw, correlated by sqrt((sigma - sigma_mid) / (sigma - sigma_next)).
    """
    levels = sigma_list(sigmas)
    for i in range(len(levels) - 1):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = denoise_at(denoise, x, sigma)
        report(callback, i, x, levels[i], levels[i + 1], denoised)
        if sigma_next == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
            continue
        sigma_mid = sigma * (sigma_next / sigma) ** r
        noise_mid = noise(x)
        shared = math.sqrt((sigma - sigma_mid) / (sigma - sigma_next))
        noise_next = shared * noise_mid + math.sqrt(1 - shared**2) * noise(x)

        down_mid, up_mid = ancestral_step(sigma, sigma_mid, eta)
        x_mid = _data_prediction_step(x, sigma, down_mid, denoised) + noise_mid * (s_noise * up_mid)
        denoised_mid = denoise_at(denoise, x_mid, sigma_mid)

        weight_mid = 1 / (2 * r)
        estimate = (1 - weight_mid) * denoised + weight_mid * denoised_mid
        down_next, up_next = ancestral_step(sigma, sigma_next, eta)
        x = _data_prediction_step(x, sigma, down_next, estimate) + noise_next * (s_noise * up_next)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource = gaussian_noise,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M), data prediction (Lu et al. 2022b, sec. 4 and App. B; midpoint or heun form)."""
    if solver_type not in ("midpoint", "heun"):
        raise InvalidArgumentError(f"dpmpp_2m_sde solver_type is 'midpoint' or 'heun', not {solver_type!r}")
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
            damped = (1 + eta) * h
            kept = -math.expm1(-damped)
            x = (sigma_next / sigma) * math.exp(-eta * h) * x + kept * denoised
            if previous is not None:
                ratio = math.log(levels[i - 1] / sigma) / h
                weight = 0.5 * kept if solver_type == "midpoint" else 1 - kept / damped
                x = x + weight / ratio * (denoised - previous)
            if eta:
                x = x + noise(x) * _sde_noise_scale(sigma_next, h, eta, s_noise)
        previous = denoised
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource = gaussian_noise,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """SDE-DPM-Solver++(3M): third-order multistep data prediction (Lu et al. 2022b, sec. 4, eq. 15-16)."""
    levels = sigma_list(sigmas)
    history: list[tuple[torch.Tensor, float]] = []
    for i in range(len(levels) - 1):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = denoise_at(denoise, x, sigma)
        report(callback, i, x, levels[i], levels[i + 1], denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = math.log(sigma / sigma_next)
        damped = (1 + eta) * h
        x = (sigma_next / sigma) * math.exp(-eta * h) * x - math.expm1(-damped) * denoised
        phi_2 = math.expm1(-damped) / damped + 1
        if len(history) >= 2:
            (older, h_older), (old, h_old) = history[-2], history[-1]
            r0, r1 = h_old / h, h_older / h
            first_0 = (denoised - old) / r0
            first_1 = (old - older) / r1
            first = first_0 + (first_0 - first_1) * r0 / (r0 + r1)
            second = (first_0 - first_1) / (r0 + r1)
            phi_3 = phi_2 / damped - 0.5
            x = x + phi_2 * first - phi_3 * second
        elif history:
            old, h_old = history[-1]
            x = x + phi_2 * (denoised - old) * (h / h_old)
        if eta:
            x = x + noise(x) * _sde_noise_scale(sigma_next, h, eta, s_noise)
        history = [*history[-1:], (denoised, h)]
    return x
