"""Diffusion core: schedules, parameterizations, the denoiser, guidance and the samplers."""

from __future__ import annotations

import torch

from lienzo.diffusion.denoiser import Conditioning, Denoiser
from lienzo.diffusion.guidance import guided_denoiser, rescale_guidance
from lienzo.diffusion.img2img import img2img_sigmas, img2img_start, noise_latent, partial_denoise_sigmas
from lienzo.diffusion.parameterization import (
    EpsPrediction,
    Parameterization,
    VPrediction,
    X0Prediction,
    parameterization_for,
)
from lienzo.diffusion.samplers import SAMPLER_FUNCTIONS, get_sampler, resolve_sampler
from lienzo.diffusion.samplers.common import Callback, Denoise
from lienzo.diffusion.schedules import ModelSampling, NoiseScheduleConfig, rescale_zero_terminal_snr
from lienzo.diffusion.sigma_schedules import SCHEDULERS, get_sigmas

SAMPLERS: tuple[str, ...] = tuple(SAMPLER_FUNCTIONS)


def sample(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "euler",
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    **options,
) -> torch.Tensor:
    """Run the named sampler (id or A1111 name) from x at sigmas[0] down to sigmas[-1]."""
    return get_sampler(sampler)(denoise, x, sigmas, generator=generator, callback=callback, **options)


__all__ = [
    "SAMPLERS",
    "SCHEDULERS",
    "Conditioning",
    "Denoiser",
    "EpsPrediction",
    "ModelSampling",
    "NoiseScheduleConfig",
    "Parameterization",
    "VPrediction",
    "X0Prediction",
    "get_sampler",
    "get_sigmas",
    "guided_denoiser",
    "img2img_sigmas",
    "img2img_start",
    "noise_latent",
    "parameterization_for",
    "partial_denoise_sigmas",
    "rescale_guidance",
    "rescale_zero_terminal_snr",
    "resolve_sampler",
    "sample",
]
