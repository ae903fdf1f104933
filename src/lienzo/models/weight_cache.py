"""A tensor derived from a module's weight (a folded or transformed kernel, a weight in a kernel library's
own layout), computed once and kept until the weight changes, so inference pays for it once per weight
rather than once per call."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn


def cacheable(weight: Tensor) -> bool:
    """True for a weight whose derived tensors can be kept: a Parameter, outside tracing, not being trained
    in this pass, with a version counter (tensors made under inference mode have none; weights computed on
    each access, such as parametrizations, are no Parameter)."""
    return not (
        torch.compiler.is_compiling()
        or not isinstance(weight, nn.Parameter)
        or weight.is_inference()
        or (weight.requires_grad and torch.is_grad_enabled())
    )


class WeightCache:
    """`derive(weight, *args)`, kept until the weight changes, a new tensor (its storage is held, so no other
    tensor can take its address) or an in-place write (the version counter), or `args` do. Callers check
    `cacheable` first. The kept tensor is an ordinary tensor even when derived under inference mode, so a
    later pass that trains something else (an embedding through a frozen UNet) can save it for backward."""

    def __init__(self, derive: Callable[..., Tensor]) -> None:
        self.derive = derive
        self.source: Tensor | None = None
        self.version = -1
        self.args: tuple = ()
        self.value: Tensor | None = None

    def __deepcopy__(self, memo: dict) -> WeightCache:
        """An empty cache: a copied network (a pipeline view) derives from its own weights when first used."""
        fresh = copy.copy(self)
        fresh.source, fresh.version, fresh.args, fresh.value = None, -1, (), None
        return fresh

    def __call__(self, weight: Tensor, *args) -> Tensor:
        if (
            self.value is None
            or weight.data_ptr() != self.source.data_ptr()
            or weight._version != self.version
            or args != self.args
        ):
            with torch.inference_mode(False), torch.no_grad():
                value = self.derive(weight, *args)
            self.source, self.version, self.args, self.value = weight.detach(), weight._version, args, value
        return self.value
