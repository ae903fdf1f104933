"""The tiny autoencoder's decoder (TAESD, github.com/madebyollin/taesd): a small convolutional stand-in
for the VAE decoder, for fast previews.

Layers are numbered as in the published `taesd_decoder` weights (an `nn.Sequential`): 0 a soft clamp of
the latent, 1 a 3x3 convolution to 64 channels, then residual blocks of three 3x3 convolutions, three
times 3 blocks each followed by 2x nearest upsampling and a bias-free 3x3 convolution, one last block,
and 19 the 3x3 convolution to RGB. It reads the diffusion latent as the UNet sees it (already scaled)
and returns RGB in [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

WIDTH = 64
BLOCKS_PER_LEVEL = 3
UPSAMPLINGS = 3


def _conv(channels_in: int, channels_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """3 * tanh(x / 3): the latent squashed smoothly into (-3, 3)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class TinyBlock(nn.Module):
    """relu(conv(relu(conv(relu(conv(x))))) + x): the residual block of TAESD."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        convolutions = [_conv(channels, channels) for _ in range(3)]
        self.conv = nn.Sequential(convolutions[0], nn.ReLU(), convolutions[1], nn.ReLU(), convolutions[2])
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(self.conv(x) + x)


class TinyDecoder(nn.Sequential):
    """TAESD's decoder: (B, C, h, w) scaled latents -> (B, 3, 8h, 8w) RGB in [0, 1]."""

    def __init__(self, latent_channels: int = 4) -> None:
        layers: list[nn.Module] = [SoftClamp(), _conv(latent_channels, WIDTH), nn.ReLU()]
        for _ in range(UPSAMPLINGS):
            layers += [TinyBlock(WIDTH) for _ in range(BLOCKS_PER_LEVEL)]
            layers += [nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False)]
        layers += [TinyBlock(WIDTH), _conv(WIDTH, 3)]
        super().__init__(*layers)
        self.latent_channels = latent_channels

    def decode(self, latents: Tensor) -> Tensor:
        """Images in [-1, 1] (lienzo's pixel range) from scaled latents."""
        return self(latents) * 2 - 1
