"""Cross-attention capture for per-word maps, after DAAM (Tang et al. 2023, "What the DAAM").

While `capture_cross_attention` is open, a forward hook on every cross-attention layer (each transformer
block's `attn2`) recomputes softmax(q k^T / sqrt(d)) for the first batch row (the conditional half of a
CFG batch, or the whole batch without guidance) and adds it, averaged over heads, into a running sum per
feature-map size. The layer's own output still comes from scaled dot-product attention and is not
touched, so the image is the same with capture on or off; outside the block no hook is installed.

The maps average the layers whose feature maps are at least MIN_MAP_SIDE cells on their shorter side
(all of them when none is): SD at 512 px attends at 64, 32, 16 and 8 cells, all kept as DAAM keeps them,
while the built-in 128 px model also attends at 4 x 4, too coarse to place a word (docs/xray.md measures
both).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lienzo.models.blocks import BasicTransformerBlock, CrossAttention

MIN_MAP_SIDE = 8


def cross_attention_layers(unet: nn.Module) -> list[CrossAttention]:
    """The UNet's cross-attention layers (the `attn2` of every transformer block), in module order."""
    return [module.attn2 for module in unet.modules() if isinstance(module, BasicTransformerBlock)]


def feature_size(tokens: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a feature map of `tokens` pixels at some power-of-two downsampling of the latent
    (sizes rounded up, as strided convolutions round them)."""
    height, width = latent_size
    factor = 1
    while factor <= max(height, width):
        size = (math.ceil(height / factor), math.ceil(width / factor))
        if size[0] * size[1] == tokens:
            return size
        factor *= 2
    raise ValueError(f"{tokens} attention queries fit no downsampling of a {height}x{width} latent")


@dataclass
class AttentionCapture:
    """Running sums of head-averaged cross-attention probabilities per feature-map size, and the number
    of layer calls summed into each (`calls`)."""

    latent_size: tuple[int, int]
    sums: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    calls: dict[tuple[int, int], int] = field(default_factory=dict)

    def record(self, module: CrossAttention, inputs: tuple, output: Tensor) -> None:
        """Forward hook: add this call's probabilities (first batch row) to the sums."""
        x, context = inputs[0][:1], inputs[1][:1]
        keys = context
        for patch in module.context_patches:
            keys, _ = patch(keys, keys)
        q = module.to_q(x).float().unflatten(-1, (module.heads, -1)).transpose(1, 2)
        k = module.to_k(keys).float().unflatten(-1, (module.heads, -1)).transpose(1, 2)
        probabilities = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
        averaged = probabilities.mean(dim=1)[0]
        size = feature_size(averaged.shape[0], self.latent_size)
        total = self.sums.get(size)
        self.sums[size] = averaged if total is None else total + averaged
        self.calls[size] = self.calls.get(size, 0) + 1

    def kept_sizes(self, min_side: int = MIN_MAP_SIDE) -> list[tuple[int, int]]:
        """The feature-map sizes the maps average: shorter side at least `min_side`, or the finest."""
        floor = min(min_side, max(min(size) for size in self.sums))
        return [size for size in self.sums if min(size) >= floor]

    def token_maps(self, height: int, width: int, min_side: int = MIN_MAP_SIDE) -> Tensor:
        """(tokens, height, width) float32 maps: the kept layers' probabilities bilinearly upsampled to the
        image size and averaged over heads, layers and sampler calls."""
        if not self.sums:
            raise ValueError("no cross-attention was captured: run the model inside capture_cross_attention")
        sizes = self.kept_sizes(min_side)
        maps = None
        for rows, columns in sizes:
            grid = self.sums[rows, columns].transpose(0, 1).reshape(1, -1, rows, columns)
            upsampled = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0]
            maps = upsampled if maps is None else maps + upsampled
        return maps / sum(self.calls[size] for size in sizes)


@contextlib.contextmanager
def capture_cross_attention(unet: nn.Module, latent_size: tuple[int, int]) -> Iterator[AttentionCapture]:
    """Hooks on the UNet's cross-attention layers while the block runs; they are removed on exit."""
    capture = AttentionCapture(latent_size)
    handles = [layer.register_forward_hook(capture.record) for layer in cross_attention_layers(unet)]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()
