"""The denoiser: a UNet-like network wrapped into `denoise(x, sigma, cond) -> x0`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lienzo.diffusion.parameterization import Parameterization
from lienzo.diffusion.samplers.common import append_dims
from lienzo.diffusion.schedules import ModelSampling

Network = Callable[..., torch.Tensor]
"""`unet(x, t, context, y=None) -> output` with x of shape (B, C, H, W) and t of shape (B,)."""


@dataclass(frozen=True)
class Conditioning:
    """What the network is conditioned on: cross-attention context (B, L, C) and optional vector y (B, D)."""

    context: torch.Tensor
    y: torch.Tensor | None = None


class Denoiser:
    """x0 = c_skip * x + c_out * unet(c_in * x, t(sigma), context, y) (Karras et al. 2022, eq. 7)."""

    def __init__(self, unet: Network, parameterization: Parameterization, model_sampling: ModelSampling):
        self.unet = unet
        self.parameterization = parameterization
        self.model_sampling = model_sampling

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The network's x0 estimate for latents x at noise levels sigma (shape (B,))."""
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
        scale = self.parameterization.scalings(append_dims(sigma.to(x.dtype), x.ndim))
        timesteps = self.model_sampling.sigma_to_t(sigma.double()).to(device=x.device, dtype=torch.float32)
        output = self.unet(x * scale.c_in, timesteps, cond.context, y=cond.y)
        return scale.c_skip * x + scale.c_out * output.to(x.dtype)
