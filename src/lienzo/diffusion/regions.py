"""Lists of conditionings, each restricted in space (an area) and time (a sigma range), as a denoiser.

ComfyUI's semantics: every entry that applies at the current sigma predicts x0 on its area of the
latent (the model sees only that crop); the predictions are averaged, weighted by the entry's strength
and a linear feather of up to FEATHER cells on area edges inside the latent; where no entry applies the
prediction is 0. Classifier-free guidance (Ho & Salimans 2022, eq. 6) then combines the positive and
negative averages. One full-size entry per side reduces to `guided_denoiser` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from lienzo.diffusion.denoiser import Conditioning, Denoiser
from lienzo.diffusion.guidance import batched_conditioning, guided_denoiser, rescale_guidance
from lienzo.diffusion.samplers.common import Denoise
from lienzo.diffusion.schedules import ModelSampling

FEATHER = 8
"""Most latent cells over which an area's weight ramps up from an inner edge (ComfyUI's `fuzz`; at most a
quarter of the area's side)."""


@dataclass(frozen=True)
class RegionalConditioning:
    """One entry of a conditioning list: the UNet conditioning, its weight in the average, the area it
    covers as (height, width, top, left) in latent cells (None: everything), the sigmas at which it
    applies, (low, high) inclusive, and the denoiser that replaces the shared one for this entry (one whose
    network adds ControlNet residuals, say)."""

    cond: Conditioning
    strength: float = 1.0
    area: tuple[int, int, int, int] | None = None
    sigma_range: tuple[float, float] = (0.0, math.inf)
    denoiser: Denoiser | None = None

    @property
    def plain(self) -> bool:
        """True for an entry that covers the whole latent at every sigma."""
        return self.area is None and self.sigma_range == (0.0, math.inf)

    def applies(self, sigma: float) -> bool:
        low, high = self.sigma_range
        return low <= sigma <= high


def percent_to_sigma(model_sampling: ModelSampling, percent: float) -> float:
    """The sigma at `percent` of the way through sampling (0: infinite, 1: zero), on the timestep axis."""
    if percent <= 0:
        return math.inf
    if percent >= 1:
        return 0.0
    t = (1 - percent) * (model_sampling.num_timesteps - 1)
    return float(model_sampling.t_to_sigma(torch.tensor(t, dtype=torch.float64)))


def edge_ramp(length: int) -> torch.Tensor:
    """Weights (t + 1) / r of the first r = min(FEATHER, length // 4) cells from an inner edge."""
    cells = min(FEATHER, length // 4)
    return torch.arange(1, cells + 1, dtype=torch.float32) / max(cells, 1)


def area_weight(
    entry: RegionalConditioning, shape: tuple[int, ...]
) -> tuple[tuple[slice, slice], torch.Tensor]:
    """The (rows, columns) slices of an entry's area clipped to the latent, and its (h, w) weight: strength,
    feathered along edges that lie inside the latent (`edge_ramp`)."""
    height, width = shape[-2:]
    if entry.area is None:
        return (slice(0, height), slice(0, width)), torch.full((height, width), float(entry.strength))
    area_h, area_w, top, left = entry.area
    top, left = min(max(top, 0), height - 1), min(max(left, 0), width - 1)
    area_h, area_w = max(1, min(area_h, height - top)), max(1, min(area_w, width - left))
    weight = torch.full((area_h, area_w), float(entry.strength))
    rows, columns = edge_ramp(area_h), edge_ramp(area_w)
    if top > 0:
        weight[: len(rows)] *= rows[:, None]
    if top + area_h < height:
        weight[area_h - len(rows) :] *= rows.flip(0)[:, None]
    if left > 0:
        weight[:, : len(columns)] *= columns
    if left + area_w < width:
        weight[:, area_w - len(columns) :] *= columns.flip(0)
    return (slice(top, top + area_h), slice(left, left + area_w)), weight


def averaged_prediction(
    denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, entries: list[RegionalConditioning]
) -> torch.Tensor:
    """The strength- and area-weighted average of the x0 predictions of the entries that apply at sigma."""
    total = torch.zeros_like(x)
    count = torch.full_like(x, 1e-37)
    level = float(sigma.max())
    for entry in entries:
        if not entry.applies(level):
            continue
        (rows, columns), weight = area_weight(entry, x.shape)
        crop = x[..., rows, columns]
        cond = batched_conditioning(entry.cond, x.shape[0])
        if cond.concat is not None:
            cond = replace(cond, concat=cond.concat[..., rows, columns])
        weight = weight.to(x)
        total[..., rows, columns] += (entry.denoiser or denoiser)(crop, sigma, cond) * weight
        count[..., rows, columns] += weight
    return total / count


def batched_pair(
    positive: list[RegionalConditioning], negative: list[RegionalConditioning], cfg_scale: float
) -> bool:
    """Whether the lists are one plain entry per side with the same denoiser (or no guidance), which
    `regional_denoiser` runs as one batched `guided_denoiser` call per step."""
    first = positive[0] if len(positive) == 1 else None
    return (
        first is not None
        and first.plain
        and (
            cfg_scale == 1
            or (len(negative) == 1 and negative[0].plain and negative[0].denoiser is first.denoiser)
        )
    )


def regional_denoiser(
    denoiser: Denoiser,
    positive: list[RegionalConditioning],
    negative: list[RegionalConditioning],
    cfg_scale: float,
    guidance_rescale: float = 0.0,
    sigma_interval: tuple[float, float] = (0.0, math.inf),
) -> Denoise:
    """`denoise(x, sigma) -> x0` of conditioning lists with CFG while sigma lies in `sigma_interval` (the
    positive average alone elsewhere); plain single entries with the same denoiser take the batched
    `guided_denoiser` path (`batched_pair`)."""
    if batched_pair(positive, negative, cfg_scale):
        first = positive[0]
        uncond = negative[0].cond if negative else None
        return guided_denoiser(
            first.denoiser or denoiser, first.cond, uncond, cfg_scale, guidance_rescale, sigma_interval
        )
    low, high = sigma_interval

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        cond_x0 = averaged_prediction(denoiser, x, sigma, positive)
        if cfg_scale == 1 or not low <= float(sigma.max()) <= high:
            return cond_x0
        uncond_x0 = averaged_prediction(denoiser, x, sigma, negative)
        guided = uncond_x0 + cfg_scale * (cond_x0 - uncond_x0)
        if guidance_rescale > 0:
            guided = rescale_guidance(x, guided, cond_x0, sigma.to(x.dtype), guidance_rescale)
        return guided

    return denoise
