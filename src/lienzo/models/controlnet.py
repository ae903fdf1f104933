"""ControlNet (Zhang et al. 2023): a trainable copy of the UNet's encoder fed a control image.

The copy is `UNetEncoder` built from the base model's UNet config; the control image enters through the
hint block (`input_hint_block`: 3x3 convolutions, every other one strided, down to the latent size) and
is added after the first input block; each skip connection and the middle block leave through a zero
convolution (`zero_convs.N.0`, `middle_block_out.0`). Attribute names are the ldm `control_model.` keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lienzo.models.conditioning import Conditioning, ControlResiduals
from lienzo.models.packed_conv import PackedConv2d
from lienzo.models.unet import UNetConfig, UNetEncoder

HINT_CHANNELS = (16, 32, 96, 256)
"""Widths of the published hint blocks (three 2x downsamplings: the SD VAE's factor 8)."""


@dataclass(frozen=True)
class ControlNetConfig:
    """A ControlNet: the UNet encoder's config, the control image's channels and the hint block's widths
    (len(hint_block_channels) - 1 downsamplings, which must match the VAE's factor)."""

    unet: UNetConfig
    hint_channels: int = 3
    hint_block_channels: tuple[int, ...] = HINT_CHANNELS

    @property
    def downscale_factor(self) -> int:
        """How much the hint block shrinks the control image: 2 ** downsamplings."""
        return 2 ** (len(self.hint_block_channels) - 1)


def controlnet_config_for(unet: UNetConfig, vae_factor: int = 8, hint_channels: int = 3) -> ControlNetConfig:
    """The config of a new ControlNet for a base UNet and a VAE shrinking images `vae_factor`x (a power of
    2): the published hint widths cut to that many downsamplings (doubling on past 256 for larger ones)."""
    downsamplings = vae_factor.bit_length() - 1
    if vae_factor < 1 or 2**downsamplings != vae_factor:
        raise ValueError(f"a VAE factor is a power of 2, got {vae_factor}")
    widths = HINT_CHANNELS + tuple(HINT_CHANNELS[-1] * 2**k for k in range(1, downsamplings - 2))
    return ControlNetConfig(unet, hint_channels, widths[: downsamplings + 1])


def hint_block(config: ControlNetConfig) -> nn.Sequential:
    """ldm's `input_hint_block`: conv, SiLU, then per width step a conv and a strided conv (each with
    SiLU), and a final conv to the UNet's model channels (zero at initialisation)."""
    widths = config.hint_block_channels
    layers: list[nn.Module] = [PackedConv2d(config.hint_channels, widths[0], 3, padding=1), nn.SiLU()]
    for channels, wider in zip(widths, widths[1:], strict=False):
        layers += [PackedConv2d(channels, channels, 3, padding=1), nn.SiLU()]
        layers += [PackedConv2d(channels, wider, 3, padding=1, stride=2), nn.SiLU()]
    layers.append(PackedConv2d(widths[-1], config.unet.model_channels, 3, padding=1))
    return nn.Sequential(*layers)


class ControlNet(UNetEncoder):
    """ControlNet of the ldm `cldm.ControlNet` layout; `forward` gives the residuals the UNet adds."""

    def __init__(self, config: ControlNetConfig) -> None:
        super().__init__(config.unet)
        self.controlnet_config = config
        self.input_hint_block = hint_block(config)
        self.zero_convs = nn.ModuleList(
            nn.Sequential(PackedConv2d(channels, channels, 1)) for channels in self.skip_channels
        )
        middle = self.skip_channels[-1]
        self.middle_block_out = nn.Sequential(PackedConv2d(middle, middle, 1))

    def forward(self, x: Tensor, hint: Tensor, t: Tensor, cond: Conditioning) -> ControlResiduals:
        """Residuals for latents x (B, C, h, w) at timesteps t (B,), the control image `hint`
        (B or 1, hint_channels, h * factor, w * factor) in [0, 1], and cond's context and vector y."""
        emb = self.embed(t, cond.y, x.shape[0], x.dtype)
        guided = self.input_hint_block(hint.to(x.dtype))
        if guided.shape[-2:] != x.shape[-2:]:
            factor = self.controlnet_config.downscale_factor
            raise ValueError(
                f"this ControlNet's hint block shrinks images {factor}x to {tuple(guided.shape[-2:])}, but "
                f"the latents are {tuple(x.shape[-2:])}: use a ControlNet made for this model's VAE"
            )
        first, *rest = self.input_blocks
        h = first(x, emb, cond.context) + guided
        skips = [self.zero_convs[0](h)]
        for block, zero_conv in zip(rest, self.zero_convs[1:], strict=True):
            h = block(h, emb, cond.context)
            skips.append(zero_conv(h))
        middle = self.middle_block_out(self.middle_block(h, emb, cond.context))
        return ControlResiduals(tuple(skips), middle)
