"""First-order samplers over `denoise(x, sigma) -> x0`: Euler, Euler ancestral, DDIM, DDPM and LCM."""

from __future__ import annotations

import torch

from lienzo.diffusion.samplers.common import (
    Callback,
    Denoise,
    NoiseSource,
    ancestral_step,
    batch_sigma,
    gaussian_noise,
    report,
    to_d,
)


@torch.no_grad()
def sample_euler(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource = gaussian_noise,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE, with optional churn (Karras et al. 2022, Algorithm 2)."""
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        gamma = min(s_churn / steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = batch_sigma(sigmas[i] * (1 + gamma), x)
        if gamma > 0:
            x = x + noise(x) * s_noise * sigma * (gamma**2 + 2 * gamma) ** 0.5
        denoised = denoise(x, sigma_hat)
        report(callback, i, x, float(sigma_hat[0]), sigma_next, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigma_next - float(sigma_hat[0]))
    return x


@torch.no_grad()
def sample_euler_ancestral(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource = gaussian_noise,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler step to sigma_down plus fresh noise sigma_up (ancestral sampling; Song et al. 2021, eq. 12)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        sigma_t = batch_sigma(sigmas[i], x)
        denoised = denoise(x, sigma_t)
        report(callback, i, x, sigma, sigma_next, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + to_d(x, sigma_t, denoised) * (sigma_down - sigma)
        if sigma_up > 0:
            x = x + noise(x) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_ddim(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource = gaussian_noise,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) in sigma form: x0 + sigma_down * eps + sigma_up * z; eta=0 is Euler."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, batch_sigma(sigmas[i], x))
        report(callback, i, x, sigma, sigma_next, denoised)
        eps = (x - denoised) / sigma
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = denoised + eps * sigma_down
        if sigma_up > 0:
            x = x + noise(x) * sigma_up
    return x


@torch.no_grad()
def sample_ddpm(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource = gaussian_noise,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDPM: sample the posterior q(x_prev | x, x0) (Ho et al. 2020, eq. 6-7), written in sigma form."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, batch_sigma(sigmas[i], x))
        report(callback, i, x, sigma, sigma_next, denoised)
        keep = sigma_next**2 / sigma**2
        x = denoised + (x - denoised) * keep
        if sigma_next > 0:
            x = x + noise(x) * (sigma_next**2 * (1 - keep)) ** 0.5
    return x


@torch.no_grad()
def sample_lcm(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseSource = gaussian_noise,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Latent consistency sampling: jump to x0, re-noise to the next sigma (Luo et al. 2023, Algorithm 1)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoise(x, batch_sigma(sigmas[i], x))
        report(callback, i, x, sigma, sigma_next, denoised)
        x = denoised
        if sigma_next > 0:
            x = x + noise(x) * sigma_next
    return x
