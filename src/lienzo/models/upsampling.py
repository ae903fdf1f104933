"""Nearest-neighbour 2x upsampling followed by a 3x3 convolution, computed as four 2x2 convolutions of the
input (the resize-convolution written as a sub-pixel convolution, Shi et al. 2016): each output phase
(row parity a, column parity b) sees only two input rows and two input columns, whose taps add up, so the
same result takes 16 instead of 36 multiply-adds per output quad and never builds the 4x larger
upsampled tensor. Outputs match the plain form up to float rounding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lienzo.models.weight_cache import WeightCache, cacheable

PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))
"""(row parity, column parity) of the output pixels, in the order the folded kernel stacks them."""
SUBPIXEL_MIN_CELLS = 256
"""Input height x width from which the sub-pixel form is used (bench/upsample_speed.py)."""


def fold_taps(kernel: Tensor, dim: int, parity: int) -> Tensor:
    """The 3 taps along `dim` as the 2 that one output parity sees after a nearest 2x upsampling: even
    outputs read the previous input row with tap 0 and their own with taps 1 + 2; odd outputs read their own
    with taps 0 + 1 and the next with tap 2."""
    first, middle, last = kernel.unbind(dim)
    pair = (first, middle + last) if parity == 0 else (first + middle, last)
    return torch.stack(pair, dim)


def folded_kernel(weight: Tensor) -> Tensor:
    """(C_out, C_in, 3, 3) -> (4 C_out, C_in, 2, 2): one 2x2 kernel per output phase, summed in float32."""
    kernel = weight.float()
    phases = [fold_taps(fold_taps(kernel, 2, a), 3, b) for a, b in PHASES]
    return torch.cat(phases).to(weight.dtype)


def same_size_3x3(conv: nn.Module) -> bool:
    """True for a 3x3, stride-1, zero-padded, ungrouped Conv2d: output the size of its input."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def plain_conv(conv: nn.Module) -> bool:
    """True for a same-size 3x3 Conv2d without hooks (parametrizations such as a LoRA being trained are
    fine: they show in `conv.weight`)."""
    return same_size_3x3(conv) and not (conv._forward_hooks or conv._forward_pre_hooks)


FOLDED_KERNELS = WeightCache(folded_kernel)
"""The folded kernel of each weight that can be kept (`cacheable`); others are folded on every call."""


def upsample_conv(x: Tensor, conv: nn.Module) -> Tensor:
    """conv(nearest 2x upsampling of x), by the sub-pixel form when `conv` is a plain 3x3 convolution and x
    has at least SUBPIXEL_MIN_CELLS cells (below, reading the 16/9 larger folded kernel costs more)."""
    batch, _, height, width = x.shape
    if height * width < SUBPIXEL_MIN_CELLS or not plain_conv(conv):
        return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    channels = conv.out_channels
    bias = conv.bias.repeat(len(PHASES)) if conv.bias is not None else None
    kernel = FOLDED_KERNELS(conv.weight) if cacheable(conv.weight) else folded_kernel(conv.weight)
    phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), kernel, bias)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    size = (batch, channels, 2 * height, 2 * width)
    out = torch.empty(size, dtype=phases.dtype, device=x.device, memory_format=layout)
    for index, (a, b) in enumerate(PHASES):
        block = phases[:, index * channels : (index + 1) * channels]
        out[:, :, a::2, b::2] = block[:, :, a : a + height, b : b + width]
    return out
