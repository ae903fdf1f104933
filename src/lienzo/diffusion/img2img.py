"""Starting partway down a schedule: img2img and partial denoising."""

from __future__ import annotations

import torch

from lienzo.diffusion.samplers.common import append_dims
from lienzo.diffusion.schedules import ModelSampling
from lienzo.diffusion.sigma_schedules import get_sigmas
from lienzo.errors import InvalidArgumentError


def _check_strength(strength: float) -> None:
    """Raise unless 0 <= strength <= 1."""
    if not 0 <= strength <= 1:
        raise InvalidArgumentError(f"denoising strength must lie in [0, 1], got {strength}")


def img2img_steps(steps: int, strength: float) -> int:
    """How many of a schedule's `steps` an img2img run at `strength` samples: floor(strength * steps)."""
    _check_strength(strength)
    return min(int(strength * steps + 1e-6), steps)


def img2img_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The last `img2img_steps` steps of a full schedule (SDEdit, Meng et al. 2022)."""
    steps = len(sigmas) - 1
    return sigmas[steps - img2img_steps(steps, strength) :]


def partial_denoise_sigmas(
    schedule: str, steps: int, model_sampling: ModelSampling, denoise: float
) -> torch.Tensor:
    """Exactly `steps` steps: the tail of a schedule of int(steps / denoise) steps (ComfyUI's `denoise`)."""
    _check_strength(denoise)
    if denoise == 0:
        return torch.zeros(1)
    full = get_sigmas(schedule, int(steps / denoise), model_sampling)
    return full[-(steps + 1) :]


def noise_latent(
    latent: torch.Tensor | None, noise: torch.Tensor, sigma: float | torch.Tensor
) -> torch.Tensor:
    """x = x0 + sigma * noise, the forward process in Karras et al. 2022 notation; no latent means x0 = 0."""
    noised = noise * (sigma if isinstance(sigma, float) else append_dims(sigma.to(noise), noise.ndim))
    return noised if latent is None else latent + noised
