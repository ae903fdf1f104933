"""Diffusion core: schedules, parameterizations, the denoiser, guidance and the samplers."""

from __future__ import annotations

import torch

from lienzo.diffusion.denoiser import Conditioning, ControlResiduals, Denoiser
from lienzo.diffusion.guidance import concat_conditionings, guided_denoiser, rescale_guidance
from lienzo.diffusion.img2img import img2img_sigmas, img2img_steps, noise_latent, partial_denoise_sigmas
from lienzo.diffusion.parameterization import (
    EpsPrediction,
    Parameterization,
    VPrediction,
    X0Prediction,
    parameterization_for,
)
from lienzo.diffusion.samplers import (
    SAMPLERS,
    SamplerInfo,
    check_sampler_options,
    get_sampler,
    resolve_sampler,
    sampler_info,
)
from lienzo.diffusion.samplers.common import Callback, Denoise, NoiseSource, SeededNoise
from lienzo.diffusion.schedules import ModelSampling, rescale_zero_terminal_snr
from lienzo.diffusion.sigma_schedules import SCHEDULERS, get_sigmas
from lienzo.models.specs import NoiseScheduleConfig


def sample(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "euler",
    *,
    noise: NoiseSource | None = None,
    callback: Callback | None = None,
    **options,
) -> torch.Tensor:
    """Run the named sampler (id or A1111 name) from x at sigmas[0] down to sigmas[-1]; `options` are
    the sampler's own (eta, s_noise, ...: SAMPLERS[id].options) and unknown ones are refused."""
    info = sampler_info(sampler)
    check_sampler_options(sampler, options)
    if noise is not None and info.takes_noise:
        options["noise"] = noise
    return info.fn(denoise, x, sigmas, callback=callback, **options)


__all__ = [
    "SAMPLERS",
    "SCHEDULERS",
    "Callback",
    "Conditioning",
    "ControlResiduals",
    "Denoise",
    "NoiseSource",
    "SamplerInfo",
    "SeededNoise",
    "check_sampler_options",
    "concat_conditionings",
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
    "img2img_steps",
    "noise_latent",
    "parameterization_for",
    "partial_denoise_sigmas",
    "rescale_guidance",
    "rescale_zero_terminal_snr",
    "resolve_sampler",
    "sampler_info",
    "sample",
]
