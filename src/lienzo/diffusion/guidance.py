"""Classifier-free guidance around a Denoiser, producing the `denoise(x, sigma) -> x0` samplers take."""

from __future__ import annotations

import math

import torch

from lienzo.diffusion.denoiser import Conditioning, ControlResiduals, Denoiser
from lienzo.diffusion.parameterization import VPrediction
from lienzo.diffusion.samplers.common import Denoise
from lienzo.errors import InvalidArgumentError

V_PREDICTION = VPrediction()


def _batched(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """`tensor` with a batch of 1 repeated to `batch` rows."""
    return tensor.expand(batch, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


def _tile_tokens(context: torch.Tensor, length: int) -> torch.Tensor:
    """Context repeated along tokens to `length`; repeating all keys leaves cross-attention unchanged."""
    return context.repeat(1, length // context.shape[1], 1)


def batched_conditioning(cond: Conditioning, batch: int) -> Conditioning:
    """`cond` with every batch-1 tensor repeated to `batch` rows."""
    return cond.map(lambda tensor: _batched(tensor, batch))


def _cat_optional(name: str, first, second, join):
    """join(first, second) when both are given, None when neither is; one alone is a mistake."""
    if (first is None) != (second is None):
        raise InvalidArgumentError(
            f"give `{name}` to both the conditional and unconditional inputs, or to neither"
        )
    return None if first is None else join(first, second)


def _cat_control(first: ControlResiduals, second: ControlResiduals) -> ControlResiduals:
    """Two batches of control residuals stacked along the batch."""
    skips = _cat_each("control.skips", first.skips, second.skips)
    middle = _cat_optional("control.middle", first.middle, second.middle, lambda a, b: torch.cat([a, b]))
    return ControlResiduals(skips, middle, _cat_each("control.encoder", first.encoder, second.encoder))


def _cat_each(name: str, first: tuple, second: tuple) -> tuple:
    """Two residual lists stacked along the batch, pair by pair (both empty: empty)."""
    joined = _cat_optional(name, first or None, second or None, lambda a, b: zip(a, b, strict=True))
    return () if joined is None else tuple(torch.cat(pair) for pair in joined)


def concat_conditionings(first: Conditioning, second: Conditioning, batch: int) -> Conditioning:
    """One Conditioning holding `first` then `second` along the batch, each at `batch` rows: contexts
    (token counts tiled to their lcm), vectors y, extra channels and control residuals alike."""
    first, second = batched_conditioning(first, batch), batched_conditioning(second, batch)
    length = math.lcm(first.context.shape[1], second.context.shape[1])
    context = torch.cat([_tile_tokens(c.context, length) for c in (first, second)], dim=0)
    return Conditioning(
        context,
        y=_cat_optional("y", first.y, second.y, lambda a, b: torch.cat([a, b])),
        concat=_cat_optional("concat", first.concat, second.concat, lambda a, b: torch.cat([a, b])),
        control=_cat_optional("control", first.control, second.control, _cat_control),
    )


def rescale_guidance(
    x: torch.Tensor, guided: torch.Tensor, cond: torch.Tensor, sigma: torch.Tensor, rescale: float
) -> torch.Tensor:
    """Match the guided prediction's std to the conditional one in v space (Lin et al. 2024, eq. 15-16)."""
    v_guided, v_cond = V_PREDICTION.output_for(x, guided, sigma), V_PREDICTION.output_for(x, cond, sigma)
    dims = tuple(range(1, x.ndim))
    v_rescaled = v_guided * v_cond.std(dim=dims, keepdim=True) / v_guided.std(dim=dims, keepdim=True)
    return V_PREDICTION.denoised(x, rescale * v_rescaled + (1 - rescale) * v_guided, sigma)


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
            return denoiser(x, sigma, batched_conditioning(cond, batch))
        paired = concat_conditionings(cond, uncond, batch)
        both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), paired)
        cond_x0, uncond_x0 = both[:batch], both[batch:]
        guided = uncond_x0 + cfg_scale * (cond_x0 - uncond_x0)
        if guidance_rescale > 0:
            guided = rescale_guidance(x, guided, cond_x0, sigma.to(x.dtype), guidance_rescale)
        return guided

    return denoise
