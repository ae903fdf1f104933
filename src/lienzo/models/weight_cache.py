"""Tensors derived from a weight (a folded kernel, a weight in a kernel library's own layout), computed once
and kept until the weight changes, so inference pays for them once per weight rather than once per call."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Derived:
    """What one weight gave: `source` aliases the weight's storage (held, so no other tensor can take its
    address while this is kept), `version` is the weight's version counter then."""

    owner: weakref.ref
    source: Tensor
    version: int
    args: tuple
    value: Tensor


class WeightCache:
    """`derive(weight, *args)` by weight, kept while the weight lives: every network view that shares the
    weight (lienzo.adapters.module_view) shares what was derived from it, and it goes when the weight goes.
    Derived again when the weight changes, to new storage or by an in-place write (the version counter),
    or `args` do. Callers check `cacheable` first. The kept tensor is an ordinary tensor even when derived
    under inference mode, so a later pass that trains something else (an embedding through a frozen UNet)
    can save it for backward."""

    def __init__(self, derive: Callable[..., Tensor]) -> None:
        self.derive = derive
        self.entries: dict[int, Derived] = {}

    def clear(self) -> None:
        """Drop everything kept."""
        self.entries.clear()

    def kept(self, weight: Tensor) -> Tensor | None:
        """What is kept for `weight` now, if anything."""
        entry = self.entries.get(id(weight))
        return entry.value if entry is not None and entry.owner() is weight else None

    def __call__(self, weight: Tensor, *args) -> Tensor:
        entry = self.entries.get(id(weight))
        if (
            entry is not None
            and entry.owner() is weight
            and entry.source.data_ptr() == weight.data_ptr()
            and entry.version == weight._version
            and entry.args == args
        ):
            return entry.value
        with torch.inference_mode(False), torch.no_grad():
            value = self.derive(weight, *args)
        if entry is None or entry.owner() is not weight:
            weakref.finalize(weight, self.entries.pop, id(weight), None)
        self.entries[id(weight)] = Derived(weakref.ref(weight), weight.detach(), weight._version, args, value)
        return value
