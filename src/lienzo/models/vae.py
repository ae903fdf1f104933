"""AutoencoderKL of latent diffusion (Rombach et al. 2022): encoder to a diagonal Gaussian, decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lienzo.models.attention import attention
from lienzo.models.norms import GroupNorm
from lienzo.models.packed_conv import PackedConv2d
from lienzo.models.upsampling import upsample_conv
from lienzo.models.winograd import Conv3x3

GROUP_NORM_EPS = 1e-6
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of an ldm `AutoencoderKL`; parameter names follow the original configs."""

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    norm_groups: int = 32
    scaling_factor: float = 0.18215

    @property
    def downscale_factor(self) -> int:
        """Pixels per latent cell along each side: 2 per downsampling level."""
        return 2 ** (len(self.ch_mult) - 1)


class DiagonalGaussian:
    """Posterior q(z|x) = N(mean, exp(logvar)) of a VAE (Kingma & Welling 2014), logvar clamped as ldm."""

    def __init__(self, moments: torch.Tensor):
        mean, logvar = moments.chunk(2, dim=1)
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    @property
    def std(self) -> torch.Tensor:
        """Standard deviation exp(logvar / 2)."""
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterized draw mean + std * eps, eps from a float32 CPU generator (same on every device)."""
        noise = torch.randn(self.mean.shape, generator=generator, dtype=torch.float32, device="cpu")
        noise = noise.to(device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over channels and pixels, one value per batch item."""
        kl_map = self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar
        return 0.5 * kl_map.sum(dim=(1, 2, 3))


def _group_norm(channels: int, groups: int) -> GroupNorm:
    return GroupNorm(groups, channels, eps=GROUP_NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016) with GroupNorm and SiLU, as in ldm's VAE."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = Conv3x3(in_channels, out_channels)
        self.norm2 = _group_norm(out_channels, groups)
        self.conv2 = Conv3x3(out_channels, out_channels)
        if in_channels != out_channels:
            self.nin_shortcut = PackedConv2d(in_channels, out_channels, 1)
        else:
            self.nin_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all pixels (Vaswani et al. 2017) with 1x1-conv projections."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _group_norm(channels, groups)
        self.q = PackedConv2d(channels, channels, 1)
        self.k = PackedConv2d(channels, channels, 1)
        self.v = PackedConv2d(channels, channels, 1)
        self.proj_out = PackedConv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, 1, channels, height * width).transpose(-1, -2)

        attended = attention(tokens(self.q(h)), tokens(self.k(h)), tokens(self.v(h)))
        attended = attended.transpose(-1, -2).reshape(batch, channels, height, width)
        return x + self.proj_out(attended)


class Downsample(nn.Module):
    """Halve the resolution: pad right/bottom by one, then a 3x3 stride-2 convolution (ldm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = PackedConv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling, then a 3x3 convolution (as a sub-pixel
    convolution, lienzo.models.upsampling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_conv(x, self.conv)


class MidBlock(nn.Module):
    """Residual block, self-attention, residual block at the lowest resolution."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = SpatialSelfAttention(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class DownLevel(nn.Module):
    """One encoder resolution level: residual blocks, then an optional downsampler."""

    def __init__(self, channels_in: int, channels_out: int, num_blocks: int, groups: int, downsample: bool):
        super().__init__()
        self.block = _residual_stack(channels_in, channels_out, num_blocks, groups)
        self.downsample = Downsample(channels_out) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class UpLevel(nn.Module):
    """One decoder resolution level: residual blocks, then an optional upsampler."""

    def __init__(self, channels_in: int, channels_out: int, num_blocks: int, groups: int, upsample: bool):
        super().__init__()
        self.block = _residual_stack(channels_in, channels_out, num_blocks, groups)
        self.upsample = Upsample(channels_out) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


def _residual_stack(channels_in: int, channels_out: int, num_blocks: int, groups: int) -> nn.ModuleList:
    return nn.ModuleList(
        ResnetBlock(channels_in if index == 0 else channels_out, channels_out, groups)
        for index in range(num_blocks)
    )


class Encoder(nn.Module):
    """Image to Gaussian moments (2 * z_channels maps) at 1 / 2**(levels - 1) of the resolution."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        groups, widths = config.norm_groups, [config.ch * mult for mult in config.ch_mult]
        self.conv_in = PackedConv2d(config.in_channels, config.ch, 3, padding=1)
        inputs = [config.ch, *widths[:-1]]
        self.down = nn.ModuleList(
            DownLevel(inputs[index], width, config.num_res_blocks, groups, downsample=index < len(widths) - 1)
            for index, width in enumerate(widths)
        )
        self.mid = MidBlock(widths[-1], groups)
        self.norm_out = _group_norm(widths[-1], groups)
        self.conv_out = PackedConv2d(widths[-1], 2 * config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent to image; ldm numbers levels from high resolution, so up.{levels-1} is applied first."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        groups, widths = config.norm_groups, [config.ch * mult for mult in config.ch_mult]
        self.conv_in = PackedConv2d(config.z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1], groups)
        inputs = [*widths[1:], widths[-1]]
        self.up = nn.ModuleList(
            UpLevel(inputs[index], width, config.num_res_blocks + 1, groups, upsample=index > 0)
            for index, width in enumerate(widths)
        )
        self.norm_out = _group_norm(widths[0], groups)
        self.conv_out = PackedConv2d(widths[0], config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """KL-regularized autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1); ldm state-dict keys."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = PackedConv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = PackedConv2d(config.embed_dim, config.z_channels, 1)

    @property
    def downscale_factor(self) -> int:
        """Pixels per latent cell along each side."""
        return self.config.downscale_factor

    def encode(self, images: torch.Tensor) -> DiagonalGaussian:
        """Posterior over latents (VAE space, unscaled) of images (B, C, H, W) in [-1, 1]."""
        images = images.to(self.quant_conv.weight.dtype)
        return DiagonalGaussian(self.quant_conv(self.encoder(images)))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in about [-1, 1], not clamped, from unscaled latents (B, embed_dim, h, w)."""
        latents = latents.to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(latents))
