"""GroupNorm (Wu & He 2018) with a faster route for small bfloat16 feature maps on the CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SMALL_MAP_CELLS = 256
"""Height x width up to which bfloat16 channels_last inputs are normalised in float32: there PyTorch's
channels_last bfloat16 kernel takes 2-5x as long as casting to float32 and back (16x16 and smaller; above,
it is the faster one; bench/packed_conv_speed.py)."""


def float32_route(x: Tensor) -> bool:
    """True for a CPU bfloat16 channels_last feature map of at most SMALL_MAP_CELLS cells."""
    return (
        x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.shape[-2] * x.shape[-1] <= SMALL_MAP_CELLS
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (the same parameters and state-dict keys) that normalises small bfloat16 channels_last
    maps in float32 and rounds the result to bfloat16 once: PyTorch's bfloat16 kernel computes its
    statistics in float32 too, so the output differs from it only by that rounding."""

    def forward(self, x: Tensor) -> Tensor:
        if not float32_route(x):
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)
