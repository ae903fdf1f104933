"""3x3 convolutions by Winograd's minimal filtering (Lavin & Gray 2016): F(m x m, 3 x 3) computes each
m x m output tile from its (m + 2) x (m + 2) input tile as A^T [(G g G^T) * (B^T d B)] A, so the 9
multiply-adds per output pixel and channel pair of the direct form become (m + 2)^2 / m^2 of them (4 for
F(2x2, 3x3), 2.25 for F(4x4, 3x3)), done as (m + 2)^2 batched matrix products over all tiles. F(2x2, 3x3)'s
transforms only add, subtract and halve: in float32 it agrees with a float64 reference to about 3e-6, closer
than oneDNN's direct kernel (about 2e-5). F(4x4, 3x3)'s transforms scale by up to 8 and 1/24: about 5e-5.
Both stay far below bfloat16's rounding (4e-3 relative).

lienzo uses them for float32 inference on the CPU with channels_last inputs (its inference layout) where
they measured faster (bench/winograd_speed.py): at least WINOGRAD_MIN_CHANNELS channels in and out, and
F(4x4, 3x3) from WINOGRAD_MIN_TILES 4x4 output tiles, else F(2x2, 3x3) from as many 2x2 tiles. Everything
else (bf16, CUDA, autograd, torch.compile, small layers) takes PyTorch's convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lienzo.models.packed_conv import PackedConv2d
from lienzo.models.upsampling import same_size_3x3

WINOGRAD_MIN_CHANNELS = 256
"""Input and output channels from which the Winograd form is used (below, its transforms cost more than
the products they save; bench/winograd_speed.py)."""
WINOGRAD_MIN_TILES = 128
"""Output tiles (batch x tile rows x tile columns) from which a tile size is used: below, transforming the
filter on every call costs more than the products save."""

G_2X2 = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
"""F(2x2, 3x3)'s filter transform G (interpolation points 0, 1, -1, infinity)."""
B_4X4 = torch.tensor(
    [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ]
)
"""F(4x4, 3x3)'s input transform B^T (interpolation points 0, 1, -1, 2, -2, infinity)."""
G_4X4 = torch.tensor(
    [
        [1 / 4, 0.0, 0.0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0.0, 0.0, 1.0],
    ]
)
"""F(4x4, 3x3)'s filter transform G."""
A_4X4 = torch.tensor(
    [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ]
)
"""F(4x4, 3x3)'s output transform A^T."""


def filter_transform(weight: Tensor, g: Tensor = G_2X2) -> Tensor:
    """(C_out, C_in, 3, 3) -> (C_out, a^2, C_in): G g G^T for every channel pair, row-major (one small
    matrix product per output channel; a free view for channels_last weights)."""
    out_channels, in_channels = weight.shape[:2]
    taps = weight.permute(0, 2, 3, 1).reshape(out_channels, 9, in_channels)
    return torch.matmul(torch.kron(g, g).to(weight.dtype), taps)


def winograd_tile(conv: nn.Conv2d, x: Tensor) -> int | None:
    """The output tile size m with which lienzo computes `conv(x)` by F(m x m, 3 x 3), or None for the
    direct form: Winograd takes plain 3x3, stride-1, zero-padded float32 convolutions on the CPU, outside
    autograd and torch.compile, with channels_last input, and large enough."""
    if (
        not same_size_3x3(conv)
        or min(conv.in_channels, conv.out_channels) < WINOGRAD_MIN_CHANNELS
        or x.dim() != 4
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or conv.weight.dtype != torch.float32
        or torch.compiler.is_compiling()
        or (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
        or not x.is_contiguous(memory_format=torch.channels_last)
    ):
        return None
    batch, _, height, width = x.shape
    for tile in (4, 2):
        if batch * -(-height // tile) * -(-width // tile) >= WINOGRAD_MIN_TILES:
            return tile
    return None


def winograd_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None, tile: int = 2) -> Tensor:
    """conv2d(x, weight, bias, padding=1) by F(tile x tile, 3 x 3), tile 2 or 4, on an (N, C, H, W) input;
    the output is channels_last."""
    return {2: _f2x2, 4: _f4x4}[tile](x, weight, bias)


def _f2x2(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F(2x2, 3x3) on the NHWC view, its transforms written out as sums and differences: input tiles
    B^T d B, 16 batched products with the transformed filter, output tiles A^T m A."""
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


def _f4x4(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F(4x4, 3x3) on the NHWC view, each transform a matrix product with the tile axis: the rows, then
    the columns of the 6x6 input tiles by B^T, 36 batched products with the transformed filter, then the
    6x6 products' rows and columns by A^T."""
    batch, channels, height, width = x.shape
    rows, cols = -(-height // 4), -(-width // 4)
    b_t, a_t = B_4X4.to(x.dtype), A_4X4.to(x.dtype)
    nhwc = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 4 * cols + 1 - width, 1, 4 * rows + 1 - height))
    by_row = torch.stack([nhwc[:, k : k + 4 * rows : 4] for k in range(6)])
    by_row = torch.matmul(b_t, by_row.view(6, -1)).view(by_row.shape)
    tiles = torch.stack([by_row[:, :, :, k : k + 4 * cols : 4] for k in range(6)], dim=1)
    tiles = torch.matmul(b_t, tiles.view(6, 6, -1))
    products = torch.bmm(tiles.view(36, -1, channels), filter_transform(weight, G_4X4).permute(1, 2, 0))
    out_channels = products.shape[-1]
    out = torch.matmul(a_t, products.view(6, 6, -1))
    out = torch.matmul(a_t, out.view(6, -1)).view(4, 4, batch, rows, cols, out_channels)
    out = out.permute(2, 3, 0, 4, 1, 5).reshape(batch, 4 * rows, 4 * cols, out_channels)
    if bias is not None:
        out.add_(bias)
    if (height, width) != (4 * rows, 4 * cols):
        out = out[:, :height, :width].contiguous()
    return out.permute(0, 3, 1, 2)


class Conv3x3(PackedConv2d):
    """A 3x3, stride-1, zero-padded convolution that runs by Winograd's algorithm where `winograd_tile`
    picks a tile size, else as a PackedConv2d; the same parameters (and state-dict keys) as nn.Conv2d."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        tile = winograd_tile(self, x)
        if tile is None:
            return super().forward(x)
        return winograd_conv3x3(x, self.weight, self.bias, tile)
