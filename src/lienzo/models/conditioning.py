"""What the UNet is conditioned on besides x and t: text context, vector y, extra channels, control."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import Tensor


@dataclass(frozen=True)
class ControlResiduals:
    """What control models add to the UNet: ControlNet outputs (Zhang et al. 2023), one residual per skip
    connection (`skips`, empty for none) and one after the middle block; and T2I-Adapter features
    (Mou et al. 2023), one per encoder level added inside the down path (`encoder`, empty for none)."""

    skips: tuple[Tensor, ...] = ()
    middle: Tensor | None = None
    encoder: tuple[Tensor, ...] = ()

    def map(self, fn: Callable[[Tensor], Tensor]) -> ControlResiduals:
        """The residuals with `fn` applied to every tensor."""
        middle = None if self.middle is None else fn(self.middle)
        return ControlResiduals(
            tuple(fn(skip) for skip in self.skips), middle, tuple(fn(level) for level in self.encoder)
        )

    def __add__(self, other: ControlResiduals) -> ControlResiduals:
        """The sum of two units' residuals (several ControlNets and T2I-Adapters at once)."""
        return ControlResiduals(
            _sum_each(self.skips, other.skips),
            _sum_optional(self.middle, other.middle),
            _sum_each(self.encoder, other.encoder),
        )


def _sum_each(first: tuple[Tensor, ...], second: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Element-wise sums of two residual lists; an empty list adds nothing."""
    if not first or not second:
        return first or second
    return tuple(a + b for a, b in zip(first, second, strict=True))


def _sum_optional(first: Tensor | None, second: Tensor | None) -> Tensor | None:
    """first + second, where None adds nothing."""
    if first is None or second is None:
        return second if first is None else first
    return first + second


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
