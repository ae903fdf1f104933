"""What the UNet is conditioned on besides x and t: text context, vector y, extra channels, control."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import Tensor


@dataclass(frozen=True)
class ControlResiduals:
    """ControlNet outputs (Zhang et al. 2023): one residual per UNet skip connection, one after the middle."""

    skips: tuple[Tensor, ...]
    middle: Tensor | None = None

    def map(self, fn: Callable[[Tensor], Tensor]) -> ControlResiduals:
        """The residuals with `fn` applied to every tensor."""
        middle = None if self.middle is None else fn(self.middle)
        return ControlResiduals(tuple(fn(skip) for skip in self.skips), middle)

    def __add__(self, other: ControlResiduals) -> ControlResiduals:
        """The sum of two units' residuals (several ControlNets at once)."""
        skips = tuple(a + b for a, b in zip(self.skips, other.skips, strict=True))
        if self.middle is None or other.middle is None:
            middle = self.middle if other.middle is None else other.middle
        else:
            middle = self.middle + other.middle
        return ControlResiduals(skips, middle)


@dataclass(frozen=True)
class Conditioning:
    """Everything the UNet takes besides x and t (the sgm conditioner's outputs):

    `context` (B, L, C) for cross-attention; `y` (B, D), the SDXL vector; `concat` (B, C', H, W), extra
    input channels appended to x (inpaint mask and masked image, depth); `control`, ControlNet residuals.
    A batch of 1 in any of them stands for every row.
    """

    context: Tensor
    y: Tensor | None = None
    concat: Tensor | None = None
    control: ControlResiduals | None = None

    def map(self, fn: Callable[[Tensor], Tensor]) -> Conditioning:
        """The conditioning with `fn` applied to every tensor it holds."""
        return replace(
            self,
            context=fn(self.context),
            y=None if self.y is None else fn(self.y),
            concat=None if self.concat is None else fn(self.concat),
            control=None if self.control is None else self.control.map(fn),
        )

    def to(self, *args, **kwargs) -> Conditioning:
        """Every tensor moved or cast as `Tensor.to(*args, **kwargs)`."""
        return self.map(lambda tensor: tensor.to(*args, **kwargs))
