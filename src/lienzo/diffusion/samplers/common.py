"""Shared pieces of the k-diffusion-style samplers (Karras et al. 2022 notation: x = x0 + sigma * eps)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`denoise(x, sigma) -> x0`: the model's estimate of the clean latent; `sigma` has shape (B,)."""

Callback = Callable[[dict], None]
"""Called once per step with {"i", "x", "sigma", "sigma_next", "denoised"}."""


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """`v` with trailing singleton dimensions up to `ndim`."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def batch_sigma(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar sigma broadcast to the batch of `x`."""
    return sigma.to(x.dtype).expand(x.shape[0])


def to_d(x: torch.Tensor, sigma: torch.Tensor | float, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - x0) / sigma (Karras et al. 2022, eq. 4)."""
    if isinstance(sigma, torch.Tensor):
        sigma = append_dims(sigma, x.ndim)
    return (x - denoised) / sigma


def sigma_list(sigmas: torch.Tensor) -> list[float]:
    """The noise levels as Python floats (step coefficients are computed in float64 on the host)."""
    return [float(s) for s in sigmas.detach().cpu().double()]


def denoise_at(denoise: Denoise, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Call `denoise` at one noise level broadcast to the batch of `x`."""
    return denoise(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device))


def report(
    callback: Callback | None,
    i: int,
    x: torch.Tensor,
    sigma: float,
    sigma_next: float,
    denoised: torch.Tensor,
) -> None:
    """Send one step's state to `callback` when one was given (noise levels as floats)."""
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step: deterministic to sigma_down, then fresh noise sigma_up."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    var_up = sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2
    sigma_up = min(sigma_to, eta * var_up**0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


NoiseSource = Callable[[torch.Tensor], torch.Tensor]
"""`noise(x)`: fresh standard normal noise shaped like x, on x's device and dtype (k-diffusion's noise
sampler); stochastic samplers draw every Gaussian through it."""


def gaussian_noise(x: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like `x` from torch's global CPU generator (float32), moved to x."""
    return torch.randn(x.shape, dtype=torch.float32).to(device=x.device, dtype=x.dtype)


class SeededNoise:
    """A noise source with one CPU generator per batch row: row i is drawn in float32 from generators[i]
    (one generator serves every row), then moved to x, so a seed gives the same noise on every device and
    a batch gives each item the noise it would draw alone."""

    def __init__(self, generators: torch.Generator | Sequence[torch.Generator]):
        self.generators = [generators] if isinstance(generators, torch.Generator) else list(generators)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Noise shaped like `x`; x's batch must match the generators unless there is only one."""
        if len(self.generators) == 1:
            noise = torch.randn(x.shape, generator=self.generators[0], dtype=torch.float32)
        elif len(self.generators) == x.shape[0]:
            rows = [torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in self.generators]
            noise = torch.stack(rows)
        else:
            raise ValueError(f"{len(self.generators)} generators cannot seed a batch of {x.shape[0]}")
        return noise.to(device=x.device, dtype=x.dtype)
