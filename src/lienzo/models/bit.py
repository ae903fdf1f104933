"""BiT ResNet backbone (Kolesnikov et al. 2020) with weight-standardised convolutions, as DPT-Hybrid's stem.

Only the non-pre-activation ("bottleneck", ResNet v1.5) layout with TensorFlow-style "SAME" padding is
built: the one DPT-Hybrid (MiDaS v3) uses. Module names follow transformers' `BitBackbone` keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class BiTConfig:
    """Architecture of a BiT backbone; field names follow transformers' `BitConfig`."""

    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: tuple[int, ...] = (256, 512, 1024)
    depths: tuple[int, ...] = (3, 4, 9)
    num_groups: int = 32
    width_factor: int = 1
    output_stride: int = 32
    embedding_dynamic_padding: bool = True

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Output channels of each stage (hidden size times width factor, rounded to multiples of 8)."""
        return tuple(round_to_eight(size * self.width_factor) for size in self.hidden_sizes)


def round_to_eight(value: float, divisor: int = 8) -> int:
    """timm's make_divisible: the nearest multiple of `divisor`, never more than 10 % below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def same_padding(x: Tensor, kernel: int, stride: int, dilation: int) -> Tensor:
    """Zero-pad `x` as TensorFlow's "SAME" does: the output has ceil(size / stride) positions."""
    pads = []
    for size in reversed(x.shape[-2:]):
        total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads) if any(pads) else x


class StandardizedConv2d(nn.Conv2d):
    """Conv2d whose kernel is standardised per output channel (Qiao et al. 2019), "SAME" padded."""

    def __init__(
        self, cin: int, cout: int, kernel: int, *, stride: int = 1, dilation: int = 1, eps: float = 1e-8
    ):
        static = stride == 1 and dilation * (kernel - 1) % 2 == 0
        padding = dilation * (kernel - 1) // 2 if static else 0
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
        self.dynamic = not static
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Convolve with (w - mean(w)) / sqrt(var(w) + eps), statistics over each output channel's kernel."""
        if self.dynamic:
            x = same_padding(x, self.kernel_size[0], self.stride[0], self.dilation[0])
        flat = self.weight.reshape(self.out_channels, -1)
        variance, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
        weight = ((flat - mean) * torch.rsqrt(variance + self.eps)).reshape_as(self.weight)
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation)


class GroupNormReLU(nn.GroupNorm):
    """GroupNorm (Wu & He 2018), followed by ReLU unless `activate` is False."""

    def __init__(self, config: BiTConfig, channels: int, *, activate: bool = True):
        super().__init__(config.num_groups, channels, eps=1e-5)
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        return F.relu(x) if self.activate else x


class Stem(nn.Module):
    """7x7 stride-2 standardised convolution, GroupNorm + ReLU, 3x3 stride-2 max pool."""

    def __init__(self, config: BiTConfig):
        super().__init__()
        self.convolution = StandardizedConv2d(config.num_channels, config.embedding_size, 7, stride=2)
        self.norm = GroupNormReLU(config, config.embedding_size)
        self.dynamic_pool = config.embedding_dynamic_padding

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.convolution(x))
        if self.dynamic_pool:
            x = same_padding(x, 3, 2, 1)
        return F.max_pool2d(x, 3, 2)


class Downsample(nn.Module):
    """The projection shortcut of a stage's first block: 1x1 strided convolution and GroupNorm."""

    def __init__(self, config: BiTConfig, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = StandardizedConv2d(cin, cout, 1, stride=stride)
        self.norm = GroupNormReLU(config, cout, activate=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1, strided 3x3, 1x1 (quarter width inside), residual, then ReLU."""

    def __init__(self, config: BiTConfig, cin: int, cout: int, *, stride: int, dilation: int, first: bool):
        super().__init__()
        middle = round_to_eight(cout * 0.25)
        self.downsample = Downsample(config, cin, cout, stride) if first else None
        self.conv1 = StandardizedConv2d(cin, middle, 1)
        self.norm1 = GroupNormReLU(config, middle)
        self.conv2 = StandardizedConv2d(middle, middle, 3, stride=stride, dilation=dilation)
        self.norm2 = GroupNormReLU(config, middle)
        self.conv3 = StandardizedConv2d(middle, cout, 1)
        self.norm3 = GroupNormReLU(config, cout, activate=False)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm2(self.conv2(self.norm1(self.conv1(x))))
        return F.relu(self.norm3(self.conv3(x)) + shortcut)


class Stage(nn.Module):
    """A run of bottlenecks; the first one strides and projects the shortcut."""

    def __init__(self, config: BiTConfig, cin: int, cout: int, depth: int, *, stride: int, dilation: int):
        super().__init__()
        first_dilation = 1 if dilation in (1, 2) else 2
        self.layers = nn.Sequential()
        for index in range(depth):
            block = Bottleneck(
                config,
                cin if index == 0 else cout,
                cout,
                stride=stride if index == 0 else 1,
                dilation=first_dilation if index == 0 else dilation,
                first=index == 0,
            )
            self.layers.add_module(str(index), block)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class StageStack(nn.Module):
    """The stages; the first keeps the stem's stride 4, each later one halves it up to `output_stride`."""

    def __init__(self, config: BiTConfig):
        super().__init__()
        self.stages = nn.ModuleList()
        channels, current_stride, dilation = config.embedding_size, 4, 1
        for index, (depth, cout) in enumerate(zip(config.depths, config.stage_channels, strict=True)):
            stride = 1 if index == 0 else 2
            if current_stride >= config.output_stride:
                dilation, stride = dilation * stride, 1
            self.stages.append(Stage(config, channels, cout, depth, stride=stride, dilation=dilation))
            channels, current_stride = cout, current_stride * stride


class BiTNetwork(nn.Module):
    """Stem and stages."""

    def __init__(self, config: BiTConfig):
        super().__init__()
        self.embedder = Stem(config)
        self.encoder = StageStack(config)


class BiTBackbone(nn.Module):
    """BiT feature extractor returning every stage's output, finest first."""

    def __init__(self, config: BiTConfig):
        super().__init__()
        self.config = config
        self.bit = BiTNetwork(config)

    def forward(self, pixels: Tensor) -> list[Tensor]:
        """The feature maps after each stage of `pixels` (B, C, H, W)."""
        x = self.bit.embedder(pixels)
        features = []
        for stage in self.bit.encoder.stages:
            x = stage(x)
            features.append(x)
        return features
