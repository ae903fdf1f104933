"""Tiled VAE decoding and encoding for images too large to run whole: overlapping tiles, each run on its
own, cross-faded with linear ramps where they overlap (the scheme of diffusers' tiled_decode).

Sizes are in latent cells; a tile's pixels are `downscale_factor` times as many. Tiles differ a little
from a whole run because each tile's GroupNorm and attention see only that tile.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lienzo.errors import InvalidArgumentError
from lienzo.models.vae import AutoencoderKL, DiagonalGaussian

DEFAULT_TILE = 64
DEFAULT_OVERLAP = 16


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of the fewest tiles of `tile` cells that cover `length` with neighbours sharing at least
    `overlap` cells, spread evenly so the last one ends at `length`."""
    if not 0 <= overlap < tile:
        raise InvalidArgumentError(f"VAE tile overlap {overlap} must lie in [0, {tile}) for tiles of {tile}")
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


def blend_weights(starts: list[int], tile: int, length: int, scale: int) -> list[torch.Tensor]:
    """Per tile, the weights of its `tile * scale` output positions along one axis: linear ramps over each
    overlap with a neighbour, 1 elsewhere, normalized so the weights at every position sum to 1."""
    size = tile * scale
    ramps = []
    for index, start in enumerate(starts):
        position = torch.arange(size, dtype=torch.float64) + 0.5
        weight = torch.ones(size, dtype=torch.float64)
        if index > 0:
            weight *= (position / ((starts[index - 1] + tile - start) * scale)).clamp(max=1)
        if index < len(starts) - 1:
            weight *= ((size - position) / ((start + tile - starts[index + 1]) * scale)).clamp(max=1)
        ramps.append(weight)
    windows = [slice(start * scale, start * scale + size) for start in starts]
    total = torch.zeros(length * scale, dtype=torch.float64)
    for window, weight in zip(windows, ramps, strict=True):
        total[window] += weight
    return [weight / total[window] for window, weight in zip(windows, ramps, strict=True)]


def run_tiled(
    run: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    tile: int,
    overlap: int,
    step: int,
    out_step: int,
) -> torch.Tensor:
    """`run` over overlapping tiles of `inputs`, its outputs blended into one tensor (in run's dtype).

    Tile and overlap count cells of `step` input pixels; each cell becomes `out_step` output pixels.
    """
    height, width = inputs.shape[-2] // step, inputs.shape[-1] // step
    rows, columns = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    tile_height, tile_width = min(tile, height), min(tile, width)
    row_weights = blend_weights(rows, tile_height, height, out_step)
    column_weights = blend_weights(columns, tile_width, width, out_step)
    result, dtype = None, inputs.dtype
    for top, row_weight in zip(rows, row_weights, strict=True):
        for left, column_weight in zip(columns, column_weights, strict=True):
            output = run(
                inputs[..., top * step : (top + tile_height) * step, left * step : (left + tile_width) * step]
            )
            if result is None:
                shape = (*output.shape[:-2], height * out_step, width * out_step)
                result, dtype = output.new_zeros(shape, dtype=torch.float32), output.dtype
            weight = (row_weight[:, None] * column_weight[None, :]).to(result)
            rows_out = slice(top * out_step, (top + tile_height) * out_step)
            columns_out = slice(left * out_step, (left + tile_width) * out_step)
            result[..., rows_out, columns_out] += output.float() * weight
    return result.to(dtype)


def decode_tiled(
    vae: AutoencoderKL, latents: torch.Tensor, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP
) -> torch.Tensor:
    """`vae.decode(latents)` run on overlapping latent tiles of `tile` cells sharing `overlap` cells."""
    return run_tiled(vae.decode, latents, tile, overlap, 1, vae.downscale_factor)


def encode_tiled(
    vae: AutoencoderKL, images: torch.Tensor, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP
) -> DiagonalGaussian:
    """`vae.encode(images)` run on overlapping image tiles of `tile` latent cells sharing `overlap`; the
    posterior's mean and log-variance are blended."""

    def moments(pixels: torch.Tensor) -> torch.Tensor:
        posterior = vae.encode(pixels)
        return torch.cat([posterior.mean, posterior.logvar], dim=1)

    return DiagonalGaussian(run_tiled(moments, images, tile, overlap, vae.downscale_factor, 1))
