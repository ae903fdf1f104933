"""3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016): each 2x2 output tile
is computed from its 4x4 input tile as A^T [(G g G^T) * (B^T d B)] A, so the 36 multiply-adds per output
pixel and channel pair of the direct form become 16 per tile, 4 per pixel, done as 16 batched matrix
products over all tiles. The transforms only add, subtract and halve, so in float32 the result is as
accurate as the direct convolution (it agrees with a float64 reference to about 3e-6, oneDNN's direct
kernel to about 2e-5; bench/winograd_speed.py).

lienzo uses it for float32 inference on the CPU with channels_last inputs (its inference layout) where it
measured faster: at least WINOGRAD_MIN_CHANNELS channels in and out and WINOGRAD_MIN_TILES output tiles.
Everything else (bf16, CUDA, autograd, torch.compile, small layers) takes PyTorch's convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WINOGRAD_MIN_CHANNELS = 256
"""Input and output channels from which the Winograd form is used (below, its transforms cost more than
the products they save; bench/winograd_speed.py)."""
WINOGRAD_MIN_TILES = 128
"""Output tiles (batch x tile rows x tile columns) from which it is used: below, transforming the filter on
every call costs more than the products save."""

_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
FILTER_TRANSFORM = torch.kron(_G, _G)
"""(16, 9): row 4 i + j of G g G^T from the 9 taps of g, row-major."""


def filter_transform(weight: Tensor) -> Tensor:
    """(C_out, C_in, 3, 3) -> (C_out, 16, C_in): G g G^T for every channel pair (one small matrix product
    per output channel; a free view for channels_last weights)."""
    out_channels, in_channels = weight.shape[:2]
    taps = weight.permute(0, 2, 3, 1).reshape(out_channels, 9, in_channels)
    return torch.matmul(FILTER_TRANSFORM.to(weight.dtype), taps)


def winograd_applies(conv: nn.Conv2d, x: Tensor) -> bool:
    """True where lienzo computes `conv(x)` by F(2x2, 3x3): a plain 3x3, stride-1, zero-padded float32
    convolution on the CPU, outside autograd and torch.compile, channels_last input, and large enough."""
    if (
        conv.kernel_size != (3, 3)
        or conv.stride != (1, 1)
        or conv.padding != (1, 1)
        or conv.dilation != (1, 1)
        or conv.groups != 1
        or conv.padding_mode != "zeros"
        or min(conv.in_channels, conv.out_channels) < WINOGRAD_MIN_CHANNELS
        or x.dim() != 4
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or conv.weight.dtype != torch.float32
        or torch.compiler.is_compiling()
        or (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
        or not x.is_contiguous(memory_format=torch.channels_last)
    ):
        return False
    batch, _, height, width = x.shape
    return batch * ((height + 1) // 2) * ((width + 1) // 2) >= WINOGRAD_MIN_TILES


def winograd_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """conv2d(x, weight, bias, padding=1) by F(2x2, 3x3) on an (N, C, H, W) input; the output is
    channels_last. Works on the NHWC view: input tiles B^T d B, 16 batched products with the transformed
    filter, output tiles A^T m A."""
    batch, channels, height, width = x.shape
    rows, cols = (height + 1) // 2, (width + 1) // 2
    nhwc = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1 + width % 2, 1, 1 + height % 2))
    tiles = x.new_empty((4, 4, batch, rows, cols, channels))
    r = [nhwc[:, k : k + 2 * rows : 2] for k in range(4)]
    for i, row in enumerate((r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3])):
        c = [row[:, :, k : k + 2 * cols : 2] for k in range(4)]
        torch.sub(c[0], c[2], out=tiles[i, 0])
        torch.add(c[1], c[2], out=tiles[i, 1])
        torch.sub(c[2], c[1], out=tiles[i, 2])
        torch.sub(c[1], c[3], out=tiles[i, 3])
    products = torch.bmm(tiles.view(16, -1, channels), filter_transform(weight).permute(1, 2, 0))
    m = products.view(4, 4, batch, rows, cols, -1)
    out = x.new_empty((batch, 2 * rows, 2 * cols, m.shape[-1]))
    for a, s in enumerate(((m[0] + m[1]).add_(m[2]), (m[1] - m[2]).sub_(m[3]))):
        for b, phase in enumerate(((s[0] + s[1]).add_(s[2]), (s[1] - s[2]).sub_(s[3]))):
            if bias is not None:
                phase.add_(bias)
            out[:, a::2, b::2] = phase
    if (height, width) != (2 * rows, 2 * cols):
        out = out[:, :height, :width].contiguous()
    return out.permute(0, 3, 1, 2)


class Conv3x3(nn.Conv2d):
    """A 3x3, stride-1, zero-padded convolution that runs as F(2x2, 3x3) where `winograd_applies`; the
    same parameters (and state-dict keys) as nn.Conv2d."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if winograd_applies(self, x):
            return winograd_conv3x3(x, self.weight, self.bias)
        return super().forward(x)
