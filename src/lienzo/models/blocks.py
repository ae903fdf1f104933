"""Building blocks of the latent-diffusion UNet: time embedding, residual blocks, spatial transformers.

Module and parameter names follow the original ldm checkpoints so that a stripped state dict loads as is.
Every block that lives in the UNet's block lists takes `(x, emb, context)` so the lists run without
per-layer type dispatch. Activations and residual sums are written into freshly computed tensors
(in place, autograd-safe) to spare the allocations that dominate on CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lienzo.models.attention import attention
from lienzo.models.norms import GroupNorm
from lienzo.models.packed_conv import PackedConv2d
from lienzo.models.upsampling import upsample_conv
from lienzo.models.winograd import Conv3x3

NORM_EPS = 1e-5
TRANSFORMER_NORM_EPS = 1e-6


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (fractional) timesteps, cos half first (Vaswani et al. 2017; as in ldm)."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(max_period) / half)
    angles = t.to(torch.float32)[:, None] * torch.exp(exponent)[None, :]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class InputConv(Conv3x3):
    """3x3 convolution that opens the UNet, callable like the other blocks."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
        return super().forward(x)


class ResBlock(nn.Module):
    """Residual block with an additive timestep-embedding shift (Ho et al. 2020, DDPM; ldm layout)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm(groups, channels, eps=NORM_EPS),
            nn.SiLU(inplace=True),
            Conv3x3(channels, out_channels),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm(groups, out_channels, eps=NORM_EPS),
            nn.SiLU(inplace=True),
            nn.Dropout(0.0),
            Conv3x3(out_channels, out_channels),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else PackedConv2d(channels, out_channels, 1)
        )

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
        h = self.in_layers(x).add_(self.emb_layers(emb)[:, :, None, None])
        return self.out_layers(h).add_(self.skip_connection(x))


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention with scaled dot-product attention (Vaswani et al. 2017).

    `context_patches` are callables `(k_source, v_source) -> (k_source, v_source)` applied in order to
    what the key and value projections read (the context, or x for self-attention); A1111 hypernetworks
    are such patches. Only lienzo.adapters.ModelPatcher sets them, on its own view of a network.
    """

    context_patches: tuple = ()

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        k_source = v_source = x if context is None else context
        for patch in self.context_patches:
            k_source, v_source = patch(k_source, v_source)
        batch, tokens, _ = x.shape
        q = self.to_q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k = self.to_k(k_source).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        v = self.to_v(v_source).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        out = attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(batch, tokens, -1))


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return F.gelu(gate).mul_(value)


class FeedForward(nn.Module):
    """Transformer feed-forward network with a GEGLU input layer and 4x width."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention on the context, feed-forward."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, head_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        x = self.attn1(self.norm1(x)).add_(x)
        x = self.attn2(self.norm2(x), context).add_(x)
        return self.ff(self.norm3(x)).add_(x)


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned on a context sequence (ldm).

    The projections in and out are 1x1 convolutions or linear layers (`use_linear`); both run as
    matrix products on the token view, which is free of copies when the input is channels_last.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        depth: int,
        context_dim: int,
        groups: int,
        use_linear: bool,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = GroupNorm(groups, channels, eps=TRANSFORMER_NORM_EPS)
        if use_linear:
            self.proj_in: nn.Module = nn.Linear(channels, inner)
            self.proj_out: nn.Module = nn.Linear(inner, channels)
        else:
            self.proj_in = nn.Conv2d(channels, inner, 1)
            self.proj_out = nn.Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, context_dim, heads, head_dim) for _ in range(depth)
        )

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
        batch, channels, height, width = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        tokens = F.linear(tokens, self.proj_in.weight.flatten(1), self.proj_in.bias)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        tokens = F.linear(tokens, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return tokens.reshape(batch, height, width, channels).permute(0, 3, 1, 2).add_(x)


class Downsample(nn.Module):
    """Strided 3x3 convolution halving height and width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = PackedConv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling, 2x or to `output_size` (the skip connection's size, which is odd
    where the downsampling rounded up), followed by a 3x3 convolution (as a sub-pixel convolution at 2x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv3x3(channels, channels)

    def forward(
        self, x: Tensor, emb: Tensor, context: Tensor | None, output_size: tuple[int, int] | None = None
    ) -> Tensor:
        if output_size is None or tuple(output_size) == (2 * x.shape[-2], 2 * x.shape[-1]):
            return upsample_conv(x, self.conv)
        return self.conv(F.interpolate(x, size=output_size, mode="nearest"))


class TimestepEmbedSequential(nn.ModuleList):
    """A list of blocks applied in order, each given the timestep embedding and the context; a list
    that ends in an Upsample hands it `output_size`."""

    def forward(
        self, x: Tensor, emb: Tensor, context: Tensor | None, output_size: tuple[int, int] | None = None
    ) -> Tensor:
        *blocks, last = self
        for block in blocks:
            x = block(x, emb, context)
        if output_size is None:
            return last(x, emb, context)
        return last(x, emb, context, output_size)
