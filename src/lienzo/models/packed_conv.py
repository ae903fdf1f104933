"""Convolutions through oneDNN with the weight reordered once into the kernel's blocked layout and kept
(what PyTorch's inductor does to convolutions when it freezes weights), instead of reordered on every
call. The reorder is most of the cost of small layers: the built-in model's convolutions and SD's 8x8
and 16x16 levels (bench/packed_conv_speed.py). The product is oneDNN's convolution either way, so outputs
match `F.conv2d` to float rounding (bit for bit in bfloat16 at the shapes measured)."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from lienzo.models.weight_cache import WeightCache, cacheable


@functools.cache
def packed_dtypes() -> tuple[torch.dtype, ...]:
    """Data types of the packed path: float32, and bfloat16 where oneDNN has bfloat16 kernels for this CPU
    (elsewhere PyTorch convolves bfloat16 with its own fallback, and so does lienzo)."""
    if not torch.backends.mkldnn.is_available():
        return ()
    return (
        (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)
    )


def packed_weight(weight: Tensor, conv: nn.Conv2d, input_size: list[int]) -> Tensor:
    """The weight reordered into the layout oneDNN's kernel picks for this convolution at `input_size`
    (an opaque oneDNN tensor; other input sizes still take it)."""
    return torch.ops.mkldnn._reorder_convolution_weight(
        weight, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, input_size
    )


def packable(conv: nn.Conv2d, x: Tensor) -> bool:
    """True where `conv(x)` can take the packed path: a CPU inference call (no gradient through it) in
    float32 or bfloat16 with zero padding, a channels_last input (lienzo's inference layout, which
    oneDNN's kernels read directly) and a weight that can be kept."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.dtype in packed_dtypes()
        and conv.weight.dtype == x.dtype
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and not (torch.is_grad_enabled() and (x.requires_grad or getattr(conv.bias, "requires_grad", False)))
        and cacheable(conv.weight)
    )


class PackedConv2d(nn.Conv2d):
    """nn.Conv2d (the same parameters and state-dict keys) that runs CPU inference with its weight packed
    once for oneDNN (`packed_weight`), repacked when the weight changes (WeightCache); training, other
    devices and data types take nn.Conv2d's path."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.packed = WeightCache(packed_weight)

    def forward(self, x: Tensor) -> Tensor:
        if not packable(self, x):
            return super().forward(x)
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            self.packed(self.weight, self, list(x.shape)),
            self.bias,
            list(self.padding),
            list(self.stride),
            list(self.dilation),
            self.groups,
            "none",
            [],
            "",
        )
