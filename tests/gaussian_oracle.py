"""Exact answers for sampler tests: optimal denoisers of Gaussian and Gaussian-mixture data.

Notation of Karras et al. 2022 (EDM): x_sigma = x0 + sigma * n, the probability-flow ODE is
dx/dsigma = (x - D(x, sigma)) / sigma with D the optimal denoiser E[x0 | x_sigma].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _sigma_like(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Sigma as a tensor broadcastable against x (a (B,) sigma gets trailing singleton dims)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 1:
        sigma = sigma.reshape(sigma.shape + (1,) * (x.ndim - 1))
    return sigma


def gaussian_denoiser(mu: float | torch.Tensor, s: float | torch.Tensor) -> Denoise:
    """E[x0 | x_sigma] for x0 ~ N(mu, s^2) per dimension: mu + s^2 / (s^2 + sigma^2) * (x - mu)."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sig = _sigma_like(sigma, x)
        m = torch.as_tensor(mu, dtype=x.dtype, device=x.device)
        v = torch.as_tensor(s, dtype=x.dtype, device=x.device) ** 2
        return m + v / (v + sig**2) * (x - m)

    return denoise


def exact_ode_solution(
    x_T: torch.Tensor, sigma_from: float, sigma_to: float, mu: float | torch.Tensor, s: float | torch.Tensor
) -> torch.Tensor:
    """Probability-flow ODE flow for Gaussian data: x - mu scales by sqrt((s^2 + sigma^2)) between sigmas."""
    m = torch.as_tensor(mu, dtype=x_T.dtype)
    v = torch.as_tensor(s, dtype=x_T.dtype) ** 2
    return m + (x_T - m) * torch.sqrt((v + sigma_to**2) / (v + sigma_from**2))


def consistency_function(mu: float | torch.Tensor, s: float | torch.Tensor) -> Denoise:
    """The exact consistency function for N(mu, s^2) data: the ODE flow from (x, sigma) to sigma = 0.

    This is what a consistency / LCM model learns (Song et al. 2023), unlike the posterior mean.
    """

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sig = _sigma_like(sigma, x)
        m = torch.as_tensor(mu, dtype=x.dtype, device=x.device)
        v = torch.as_tensor(s, dtype=x.dtype, device=x.device) ** 2
        return m + (x - m) * torch.sqrt(v / (v + sig**2))

    return denoise


def mixture_denoiser(weights: Sequence[float], means: torch.Tensor, stds: Sequence[float]) -> Denoise:
    """E[x0 | x_sigma] for an isotropic Gaussian mixture sum_k w_k N(means[k], stds[k]^2 I) over flattened x.

    Posterior mean = sum_k r_k(x) (mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)), with responsibilities
    r_k proportional to w_k N(x; mu_k, (s_k^2 + sigma^2) I).
    """

    mu64 = means.to(torch.float64).reshape(1, len(weights), -1)
    var64 = torch.as_tensor(stds, dtype=torch.float64).reshape(1, -1, 1) ** 2
    log_w64 = torch.log(torch.as_tensor(weights, dtype=torch.float64)).reshape(1, -1)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], 1, -1)
        mu, var, log_w = (t.to(x.dtype) for t in (mu64, var64, log_w64))
        total = var + _sigma_like(sigma, x).reshape(-1, 1, 1) ** 2
        offset = flat - mu
        total_k = total[..., 0]
        log_r = log_w - 0.5 * (offset**2).sum(-1) / total_k - 0.5 * flat.shape[-1] * torch.log(total_k)
        r = torch.softmax(log_r, dim=1).unsqueeze(-1)
        return (r * (mu + var / total * offset)).sum(1).reshape(x.shape)

    return denoise


def mixture_sample(n: int, weights: Sequence[float], means: torch.Tensor, stds: Sequence[float], seed: int):
    """n draws of the mixture (float64), for checking sample statistics."""
    g = torch.Generator().manual_seed(seed)
    comp = torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), n, replacement=True, generator=g)
    noise = torch.randn((n, means.shape[1]), generator=g, dtype=torch.float64)
    return means.to(torch.float64)[comp] + torch.as_tensor(stds, dtype=torch.float64)[comp, None] * noise


def reference_solution(
    denoise: Denoise,
    x_T: torch.Tensor,
    sigma_from: float,
    sigma_to: float,
    steps: int = 2000,
    sigma_floor: float = 1e-7,
) -> torch.Tensor:
    """The probability-flow ODE solved in float64 by classical RK4 in u = log(sigma), where dx/du = x - D.

    Reaching sigma_to = 0: integrate to sigma_floor, then apply D once (D(x_sigma) = x_0 + O(sigma^2)).
    """
    x = x_T.to(torch.float64)
    u0, u1 = math.log(sigma_from), math.log(max(sigma_to, sigma_floor))
    h = (u1 - u0) / steps

    def f(x: torch.Tensor, u: float) -> torch.Tensor:
        return x - denoise(x, torch.full((x.shape[0],), math.exp(u), dtype=torch.float64))

    for i in range(steps):
        u = u0 + i * h
        k1 = f(x, u)
        k2 = f(x + h / 2 * k1, u + h / 2)
        k3 = f(x + h / 2 * k2, u + h / 2)
        k4 = f(x + h * k3, u + h)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    if sigma_to == 0:
        x = denoise(x, torch.full((x.shape[0],), sigma_floor, dtype=torch.float64))
    return x


def convergence_order(steps: Sequence[int], errors: Sequence[float]) -> float:
    """Empirical order p from a least-squares fit of log(error) = c - p * log(steps)."""
    log_n = torch.log(torch.as_tensor(steps, dtype=torch.float64))
    log_e = torch.log(torch.as_tensor(errors, dtype=torch.float64))
    centered = log_n - log_n.mean()
    return float(-(centered * (log_e - log_e.mean())).sum() / (centered**2).sum())


def eps_model(denoise: Denoise, t_to_sigma: Callable[[torch.Tensor], torch.Tensor]):
    """A UNet-like `model(x_vp, t, cond=None) -> eps` built from a denoiser (VP input scaling).

    The network input is x_vp = x / sqrt(1 + sigma^2); it returns eps = (x - D(x, sigma)) / sigma.
    """

    def model(x_vp: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x_vp.shape[0])
        sigma = t_to_sigma(t).to(x_vp.dtype)
        sig = _sigma_like(sigma, x_vp)
        x = x_vp * torch.sqrt(1 + sig**2)
        return (x - denoise(x, sigma)) / sig

    return model
