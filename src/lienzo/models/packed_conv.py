"""bfloat16 convolutions through oneDNN with the weight reordered once into the kernel's blocked layout and
kept (what PyTorch's inductor does when it freezes weights), instead of reordered on every call; the
reorder is much of the cost of small layers: the built-in model's and SD's 8x8 and 16x16 levels
(bench/packed_conv_speed.py). The weight is packed for the input's size, as `F.conv2d` reorders it, so
oneDNN picks the same kernel and the output is `F.conv2d`'s bit for bit; a new input size repacks."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from lienzo.models.weight_cache import WeightCache, cacheable


@functools.cache
def bf16_kernels() -> bool:
    """True where oneDNN has bfloat16 convolution kernels for this CPU (AVX-512 or AMX); elsewhere PyTorch
    convolves bfloat16 with its own fallback, and so does lienzo."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def packed_weight(
    weight: Tensor, padding: tuple, stride: tuple, dilation: tuple, groups: int, input_size: tuple
) -> Tensor:
    """The weight reordered into the layout oneDNN's kernel picks for this convolution at `input_size`
    (an opaque oneDNN tensor)."""
    return torch.ops.mkldnn._reorder_convolution_weight(
        weight, list(padding), list(stride), list(dilation), groups, list(input_size)
    )


PACKED_WEIGHTS = WeightCache(packed_weight)
"""Each packed weight with the convolution's settings and the input size it was packed for."""
_packing = [True]


def set_weight_packing(enabled: bool) -> None:
    """Keep packed copies of the convolution weights (the default: faster bfloat16 CPU convolutions) or
    not (no second copy of them in memory: about 1 GiB less for SD 1.5, 0.6 GiB for SDXL; the images are
    the same bit for bit); turning it off drops the copies already made."""
    _packing[0] = enabled
    if not enabled:
        PACKED_WEIGHTS.clear()


def weight_packing() -> bool:
    """Whether convolution weights are packed (set_weight_packing)."""
    return _packing[0]


def packable(conv: nn.Conv2d, x: Tensor) -> bool:
    """True where `conv(x)` can take the packed path: packing on (set_weight_packing), a CPU inference call
    (no gradient through it) in bfloat16 with zero padding, a channels_last input (lienzo's inference
    layout) and a weight that can be kept. Float32 is left to PyTorch, which convolves small float32
    inputs without oneDNN (im2col and a matrix product): packing there would change the sums' order, and
    batch rows would stop matching single runs of the same seed. Under torch.compile inductor lowers the
    convolution itself, so the packed path (whose weight cache Dynamo cannot trace) stays out of the graph."""
    return (
        not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.dtype == torch.bfloat16
        and _packing[0]
        and bf16_kernels()
        and conv.weight.dtype == x.dtype
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and not (torch.is_grad_enabled() and (x.requires_grad or getattr(conv.bias, "requires_grad", False)))
        and cacheable(conv.weight)
    )


class PackedConv2d(nn.Conv2d):
    """nn.Conv2d (the same parameters and state-dict keys) that runs CPU inference with its weight packed
    once for oneDNN (`packed_weight`, kept in PACKED_WEIGHTS and shared by the network views that share
    the weight), repacked when the weight or the input size changes; training, float32, other devices
    and data types take nn.Conv2d's path."""

    def forward(self, x: Tensor) -> Tensor:
        if not packable(self, x):
            return super().forward(x)
        settings = (self.padding, self.stride, self.dilation, self.groups)
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            PACKED_WEIGHTS(self.weight, *settings, tuple(x.shape)),
            self.bias,
            list(self.padding),
            list(self.stride),
            list(self.dilation),
            self.groups,
            "none",
            [],
            "",
        )
