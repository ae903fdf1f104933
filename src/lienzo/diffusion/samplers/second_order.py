"""Second-order samplers over `denoise(x, sigma) -> x0`: Heun."""

from __future__ import annotations

import torch

from lienzo.diffusion.samplers.common import Callback, Denoise, batch_sigma, report, to_d


@torch.no_grad()
def sample_heun(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Heun's 2nd-order method on the probability-flow ODE, Euler at sigma 0 (Karras et al. 2022, Alg. 1)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        sigma_t = batch_sigma(sigmas[i], x)
        denoised = denoise(x, sigma_t)
        report(callback, i, x, sigma, sigma_next, denoised)
        d = to_d(x, sigma_t, denoised)
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0:
            x = x_euler
            continue
        sigma_next_t = batch_sigma(sigmas[i + 1], x)
        d_next = to_d(x_euler, sigma_next_t, denoise(x_euler, sigma_next_t))
        x = x + (d + d_next) / 2 * (sigma_next - sigma)
    return x
