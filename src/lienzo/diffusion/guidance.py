"""Classifier-free guidance around a Denoiser, producing the `denoise(x, sigma) -> x0` samplers take."""

from __future__ import annotations

import math

import torch

from lienzo.diffusion.denoiser import Conditioning, Denoiser
from lienzo.diffusion.parameterization import VPrediction
from lienzo.diffusion.samplers.common import Denoise, append_dims
from lienzo.errors import InvalidArgumentError


def _batched(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """`tensor` with a batch of 1 repeated to `batch` rows."""
    return tensor.expand(batch, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


def _tile_tokens(context: torch.Tensor, length: int) -> torch.Tensor:
    """Context repeated along tokens to `length`; repeating all keys leaves cross-attention unchanged."""
    return context.repeat(1, length // context.shape[1], 1)


def concat_conditionings(first: Conditioning, second: Conditioning, batch: int) -> Conditioning:
    """One Conditioning holding `first` then `second` along the batch (token counts tiled to their lcm)."""
    length = math.lcm(first.context.shape[1], second.context.shape[1])
    context = torch.cat([_tile_tokens(_batched(c.context, batch), length) for c in (first, second)], dim=0)
    if (first.y is None) != (second.y is None):
        raise InvalidArgumentError(
            "give a `y` vector to both the conditional and unconditional inputs, or to neither"
        )
    y = None if first.y is None else torch.cat([_batched(first.y, batch), _batched(second.y, batch)], dim=0)
    return Conditioning(context, y)


def _to_v(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The v-prediction that yields x0 at (x, sigma)."""
    scale = VPrediction().scalings(sigma)
    return (x0 - scale.c_skip * x) / scale.c_out


def _from_v(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The x0 implied by a v-prediction at (x, sigma)."""
    scale = VPrediction().scalings(sigma)
    return scale.c_skip * x + scale.c_out * v


def rescale_guidance(
    x: torch.Tensor, guided: torch.Tensor, cond: torch.Tensor, sigma: torch.Tensor, rescale: float
) -> torch.Tensor:
    """Match the guided prediction's std to the conditional one in v space (Lin et al. 2024, eq. 15-16)."""
    sigma = append_dims(sigma, x.ndim)
    v_guided, v_cond = _to_v(x, guided, sigma), _to_v(x, cond, sigma)
    dims = tuple(range(1, x.ndim))
    v_rescaled = v_guided * v_cond.std(dim=dims, keepdim=True) / v_guided.std(dim=dims, keepdim=True)
    return _from_v(x, rescale * v_rescaled + (1 - rescale) * v_guided, sigma)


def guided_denoiser(
    denoiser: Denoiser,
    cond: Conditioning,
    uncond: Conditioning | None = None,
    cfg_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    sigma_interval: tuple[float, float] = (0.0, math.inf),
) -> Denoise:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6) in one batched pass of cond and uncond.

    Guidance applies only while sigma lies in `sigma_interval` (Kynkaanniemi et al. 2024); elsewhere, and
    whenever cfg_scale == 1, the network runs once on the conditional input alone.
    """
    if cfg_scale != 1 and uncond is None:
        raise InvalidArgumentError("cfg_scale other than 1 needs an unconditional (negative prompt) input")
    if not 0 <= guidance_rescale <= 1:
        raise InvalidArgumentError(f"guidance_rescale must lie in [0, 1], got {guidance_rescale}")
    low, high = sigma_interval

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        sigma_value = float(sigma.max())
        if cfg_scale == 1 or not low <= sigma_value <= high:
            y = None if cond.y is None else _batched(cond.y, batch)
            return denoiser(x, sigma, Conditioning(_batched(cond.context, batch), y))
        paired = concat_conditionings(cond, uncond, batch)
        both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), paired)
        cond_x0, uncond_x0 = both[:batch], both[batch:]
        guided = uncond_x0 + cfg_scale * (cond_x0 - uncond_x0)
        if guidance_rescale > 0:
            guided = rescale_guidance(x, guided, cond_x0, sigma.to(x.dtype), guidance_rescale)
        return guided

    return denoise
