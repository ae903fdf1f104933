"""The denoiser: a UNet-like network wrapped into `denoise(x, sigma, cond) -> x0`, and its training loss."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lienzo.diffusion.parameterization import Parameterization, Scalings
from lienzo.diffusion.samplers.common import append_dims
from lienzo.diffusion.schedules import ModelSampling
from lienzo.models.conditioning import Conditioning, ControlResiduals

Network = Callable[[torch.Tensor, torch.Tensor, Conditioning], torch.Tensor]
"""`unet(x, t, cond) -> output` with x of shape (B, C, H, W) and t of shape (B,)."""

__all__ = ["Conditioning", "ControlResiduals", "Denoiser", "Network"]


class Denoiser:
    """x0 = c_skip * x + c_out * unet(c_in * x, t(sigma), cond) (Karras et al. 2022, eq. 7).

    Sampling calls it for x0; training calls `loss`, which compares the same raw network output with the
    same parameterization's target, so the two cannot drift apart.
    """

    def __init__(self, unet: Network, parameterization: Parameterization, model_sampling: ModelSampling):
        self.unet = unet
        self.parameterization = parameterization
        self.model_sampling = model_sampling

    def network_output(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning
    ) -> tuple[Scalings, torch.Tensor]:
        """(the scalings at sigma, the network's raw output) for latents x at noise levels sigma (B,)."""
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
        scale = self.parameterization.scalings(append_dims(sigma.to(x.dtype), x.ndim))
        timesteps = self.model_sampling.sigma_to_t(sigma.double()).to(device=x.device, dtype=torch.float32)
        return scale, self.unet(x * scale.c_in, timesteps, cond)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The network's x0 estimate for latents x at noise levels sigma (shape (B,))."""
        scale, output = self.network_output(x, sigma, cond)
        return scale.c_skip * x + scale.c_out * output.to(x.dtype)

    def loss(
        self,
        x0: torch.Tensor,
        noise: torch.Tensor,
        sigma: torch.Tensor,
        cond: Conditioning,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The parameterization's training loss of the network at x = x0 + sigma * noise."""
        x = x0 + append_dims(sigma.to(x0.dtype), x0.ndim) * noise
        _, output = self.network_output(x, sigma, cond)
        return self.parameterization.loss(output, x0, noise, sigma, weights)
