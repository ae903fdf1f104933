"""The one way weights change after loading: patchable views of a network, and exact patch and unpatch.

A view is a copy of a module tree whose parameters and buffers are the very tensors of the original, so
views cost no weight memory. Patching a weight gives that view a new tensor (computed in float32 and cast
once to the weight's dtype) and leaves every other view on the original; unpatching puts the original
tensor object back, so it is restored bit for bit. Adapters (LoRA and LyCORIS, hypernetworks, merges)
act on `.weight`-style parameters through this patcher and never edit tensors in place.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

Delta = Callable[[torch.Tensor], torch.Tensor]
"""`delta(weight_fp32) -> change`: what a patch adds to a weight, computed in float32."""


def module_view(module: nn.Module) -> nn.Module:
    """A structural copy of `module` sharing every parameter and buffer tensor with it."""
    shared = {id(tensor): tensor for tensor in (*module.parameters(), *module.buffers())}
    return copy.deepcopy(module, memo=shared)


class ModelPatcher:
    """Owns one view of a network and the patches applied to it (ComfyUI's ModelPatcher, by analogy).

    `clone()` gives another patcher over a fresh view of the same weights; `patch` replaces named weights
    by weight + sum of deltas; `unpatch` restores the originals exactly.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.originals: dict[str, nn.Parameter] = {}

    def clone(self) -> ModelPatcher:
        """A patcher over a new view of the original (unpatched) weights."""
        patched = dict(self.originals)
        view = module_view(self.model)
        clone = ModelPatcher(view)
        for name, original in patched.items():
            clone._set(name, original)
        return clone

    def _set(self, name: str, parameter: nn.Parameter) -> None:
        owner_name, _, leaf = name.rpartition(".")
        owner = self.model.get_submodule(owner_name)
        owner._parameters[leaf] = parameter

    def patch(self, deltas: dict[str, Delta]) -> None:
        """Set each named weight to original + delta(original), in float32 then cast to its dtype."""
        named = dict(self.model.named_parameters())
        for name, delta in deltas.items():
            if name not in named:
                raise KeyError(f"{type(self.model).__name__} has no weight {name!r}")
            original = self.originals.get(name, named[name])
            base = original.detach().float()
            patched = (base + delta(base)).to(original.dtype)
            self.originals.setdefault(name, original)
            self._set(name, nn.Parameter(patched, requires_grad=False))

    def unpatch(self) -> None:
        """Put every original weight back (the same tensors, so bit for bit)."""
        for name, original in self.originals.items():
            self._set(name, original)
        self.originals.clear()
