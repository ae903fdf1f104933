"""T2I-Adapter (Mou et al. 2023, "T2I-Adapter: Learning Adapters to Dig out More Controllable Ability"):
a small network that maps a control image to one feature map per UNet encoder level.

The control image is pixel-unshuffled (8x, 16x for the SDXL adapter), then residual blocks extract one
feature per level, average-pooling 2x between levels. The UNet adds each feature to its encoder's hidden
state inside the down path (diffusers' `down_intrablock_additional_residuals`); the SDXL adapter's last
feature goes after the middle block. Attribute names are the TencentARC checkpoint keys: `conv_in`,
`body.{level * num_res_blocks + j}.{in_conv, block1, block2}`; the light adapter's
`body.{level}.{in_conv, body.{j}.block1, body.{j}.block2, out_conv}`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lienzo.models.conditioning import ControlResiduals

ADAPTER_KINDS = {
    "full_adapter": "SD 1.x",
    "full_adapter_xl": "SDXL",
    "light_adapter": "SD 1.x",
}
"""The adapter variants (diffusers' `adapter_type` names) and the family each was published for."""


@dataclass(frozen=True)
class T2IAdapterConfig:
    """A T2I-Adapter: its variant (`kind`), the control image's channels, one feature width per output,
    residual blocks per output and the pixel-unshuffle factor."""

    kind: str = "full_adapter"
    in_channels: int = 3
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    num_res_blocks: int = 2
    downscale_factor: int = 8

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"unknown T2I-Adapter kind {self.kind!r}; use one of {', '.join(ADAPTER_KINDS)}")
        if self.kind == "full_adapter_xl" and len(self.channels) != 4:
            raise ValueError(f"the SDXL T2I-Adapter has 4 outputs, got channels {self.channels}")

    @property
    def downsampled(self) -> tuple[bool, ...]:
        """Whether each output's block average-pools its input 2x first (the SDXL adapter pools once)."""
        if self.kind == "full_adapter_xl":
            return (False, False, True, False)
        return tuple(index > 0 for index in range(len(self.channels)))

    @property
    def level_count(self) -> int:
        """How many outputs go to UNet encoder levels; the SDXL adapter's last one goes after the middle."""
        return len(self.channels) - (self.kind == "full_adapter_xl")

    def feature_scales(self) -> tuple[int, ...]:
        """How much smaller than the control image each output is."""
        scales, scale = [], self.downscale_factor
        for pooled in self.downsampled:
            scale *= 2 if pooled else 1
            scales.append(scale)
        return tuple(scales)


class ResidualBlock(nn.Module):
    """The full adapter's block: an optional 2x average pool and 1x1 `in_conv` (when the width changes),
    then x + block2(relu(block1(x))) with a 3x3 and a 1x1 convolution."""

    def __init__(self, in_channels: int, channels: int, pooled: bool) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if pooled else None
        self.in_conv = nn.Conv2d(in_channels, channels, 1) if in_channels != channels else None
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = self.pool(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(self.act(self.block1(x)))


class LightResidualBlock(nn.Module):
    """The light adapter's inner block: x + block2(relu(block1(x))), both 3x3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block2(self.act(self.block1(x)))


class LightExtractor(nn.Module):
    """One light adapter output: optional 2x average pool, 1x1 `in_conv` to a quarter of the width,
    residual blocks, 1x1 `out_conv` to the width."""

    def __init__(self, in_channels: int, channels: int, blocks: int, pooled: bool) -> None:
        super().__init__()
        inner = channels // 4
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if pooled else None
        self.in_conv = nn.Conv2d(in_channels, inner, 1)
        self.body = nn.Sequential(*(LightResidualBlock(inner) for _ in range(blocks)))
        self.out_conv = nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = self.pool(x)
        return self.out_conv(self.body(self.in_conv(x)))


class T2IAdapter(nn.Module):
    """T2I-Adapter of the TencentARC layout; `forward` gives its features, `residuals` what the UNet adds."""

    def __init__(self, config: T2IAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.unshuffle = nn.PixelUnshuffle(config.downscale_factor)
        unshuffled = config.in_channels * config.downscale_factor**2
        widths = zip((None, *config.channels), config.channels, config.downsampled, strict=False)
        self.body = nn.ModuleList()
        if config.kind == "light_adapter":
            for previous, channels, pooled in widths:
                inputs = unshuffled if previous is None else previous
                self.body.append(LightExtractor(inputs, channels, config.num_res_blocks, pooled))
            return
        self.conv_in = nn.Conv2d(unshuffled, config.channels[0], 3, padding=1)
        for previous, channels, pooled in widths:
            inputs = channels if previous is None else previous
            for index in range(config.num_res_blocks):
                self.body.append(
                    ResidualBlock(inputs if index == 0 else channels, channels, pooled and not index)
                )

    def forward(self, image: Tensor) -> list[Tensor]:
        """One feature per output for a control image (B, in_channels, H, W) in [0, 1], H and W
        multiples of the unshuffle factor."""
        x = self.unshuffle(image)
        light = self.config.kind == "light_adapter"
        if not light:
            x = self.conv_in(x)
        blocks_per_output = 1 if light else self.config.num_res_blocks
        features = []
        for index, block in enumerate(self.body):
            x = block(x)
            if (index + 1) % blocks_per_output == 0:
                features.append(x)
        return features

    def residuals(self, image: Tensor) -> ControlResiduals:
        """The features as UNet control residuals: one per encoder level, the rest after the middle."""
        features = self.forward(image)
        levels = self.config.level_count
        middle = features[levels] if len(features) > levels else None
        return ControlResiduals(middle=middle, encoder=tuple(features[:levels]))
