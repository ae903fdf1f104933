"""The one way weights change after loading: patchable views of a network, and exact patch and unpatch.

A view is a copy of a module tree whose parameters and buffers are the very tensors of the original, so
views cost no weight memory. A patcher owns one view and the adapters applied to it, each under a key
with a strength. A patched parameter is recomputed from its original in float32 as
`original + sum(strength * delta(original))` and cast once to the parameter's dtype; it is a new tensor,
so every other view keeps the original. Removing the last adapter puts the original tensor object back,
so it is restored bit for bit. Changing a strength recomputes from the deltas held in memory and never
reads a file. Adapters (LoRA and LyCORIS, merges) act on `.weight`-style parameters through this patcher
and never edit tensors in place; the UNet's transformer reads `proj_in`/`proj_out` weights directly
(`F.linear`), which is why patches replace parameters rather than wrap modules.

Adapters that transform activations rather than weights (A1111 hypernetworks) are hooks: callables the
patcher puts in the `context_patches` of its view's attention modules (lienzo.models.blocks.CrossAttention),
chained in the order their keys were added. A view's modules are its own objects, so hooks never reach
another view, and a new view (`clone`) starts without any.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lienzo.errors import InvalidArgumentError

Delta = Callable[[torch.Tensor], torch.Tensor]
"""`delta(original_fp32) -> change` at strength 1, same shape as the original."""
Hook = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""`hook(k_source, v_source) -> (k_source, v_source)`, run before an attention's key and value projections."""
HOOK_ATTRIBUTE = "context_patches"
"""The attribute of a module that holds its hooks (a tuple; the class default is empty)."""


@dataclass(frozen=True)
class WeightPatch:
    """A change to one parameter, or to several seen as one (concatenated along dim 0, e.g. q, k and v
    for a fused attention projection); the change is split back over them."""

    params: tuple[str, ...]
    delta: Delta


def module_view(module: nn.Module) -> nn.Module:
    """A structural copy of `module` sharing every parameter and buffer tensor with it; its modules start
    without hooks (the hook objects are neither copied nor shared)."""
    shared: dict[int, object] = {id(tensor): tensor for tensor in (*module.parameters(), *module.buffers())}
    for submodule in module.modules():
        if HOOK_ATTRIBUTE in vars(submodule):
            shared[id(vars(submodule)[HOOK_ATTRIBUTE])] = ()
    return copy.deepcopy(module, memo=shared)


class ModelPatcher:
    """Owns one view of a network and the adapters patched into it (ComfyUI's ModelPatcher, by analogy).

    `add(key, patches, strength)` applies an adapter, `set_strength` changes its strength, `add_hooks(key,
    {module name: hook})` installs hooks, `remove` takes a key's patches and hooks out, `unpatch` takes
    everything out, and `clone()` gives another patcher over a fresh, unpatched view of the same weights.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.originals: dict[str, nn.Parameter] = {}
        self.adapters: dict[str, tuple[list[WeightPatch], float]] = {}
        self.hooks: dict[str, dict[str, Hook]] = {}
        self._hooked: set[str] = set()

    def clone(self) -> ModelPatcher:
        """A patcher over a new view of the original (unpatched) weights, with no adapters or hooks."""
        clone = ModelPatcher(module_view(self.model))
        for name, original in self.originals.items():
            clone._set(name, original)
        return clone

    @property
    def strengths(self) -> dict[str, float]:
        """The applied adapters' strengths by key, in the order they were added."""
        return {key: strength for key, (_, strength) in self.adapters.items()}

    def add(self, key: str, patches: list[WeightPatch], strength: float = 1.0) -> None:
        """Apply an adapter's patches at `strength` (replacing an adapter of the same key)."""
        named = dict(self.model.named_parameters())
        missing = sorted(
            {name for patch in patches for name in patch.params} - set(named) - set(self.originals)
        )
        if missing:
            raise InvalidArgumentError(
                f"{key} patches {len(missing)} weight(s) that {type(self.model).__name__} does not have, "
                f"e.g. {missing[0]}; is it made for another model family?"
            )
        self.adapters[key] = (list(patches), float(strength))
        self._apply()

    def set_strength(self, key: str, strength: float) -> None:
        """Change an applied adapter's strength (recomputed from memory, no file read)."""
        if key not in self.adapters:
            raise InvalidArgumentError(
                f"no adapter {key!r} is applied; applied: {', '.join(self.adapters) or 'none'}"
            )
        patches, _ = self.adapters[key]
        self.adapters[key] = (patches, float(strength))
        self._apply()

    def add_hooks(self, key: str, hooks: Mapping[str, Hook]) -> None:
        """Install hooks on the named modules under `key` (replacing that key's hooks, in its place in the
        order); each module runs its hooks in the order their keys were first added."""
        for name in hooks:
            try:
                module = self.model.get_submodule(name)
            except AttributeError:
                module = None
            if not hasattr(module, HOOK_ATTRIBUTE):
                raise InvalidArgumentError(
                    f"{key} hooks {name!r}, which is not an attention module of "
                    f"{type(self.model).__name__}; is it made for another model?"
                )
        self.hooks[key] = dict(hooks)
        self._install_hooks()

    def remove(self, key: str) -> None:
        """Take an adapter's patches and hooks out; weights no other adapter patches get their original
        tensors back."""
        if self.adapters.pop(key, None) is not None:
            self._apply()
        if self.hooks.pop(key, None) is not None:
            self._install_hooks()

    def unpatch(self) -> None:
        """Take every adapter and hook out: every original weight back (the same tensors, so bit for bit)."""
        self.adapters.clear()
        self._apply()
        self.hooks.clear()
        self._install_hooks()

    def _install_hooks(self) -> None:
        """Give each hooked module the tuple of its hooks in key order; a module left without hooks gets
        the class default (none) back."""
        chains: dict[str, list[Hook]] = {name: [] for name in self._hooked}
        for hooks in self.hooks.values():
            for name, hook in hooks.items():
                chains.setdefault(name, []).append(hook)
        for name, chain in chains.items():
            module = self.model.get_submodule(name)
            if chain:
                setattr(module, HOOK_ATTRIBUTE, tuple(chain))
            elif HOOK_ATTRIBUTE in vars(module):
                delattr(module, HOOK_ATTRIBUTE)
        self._hooked = {name for name, chain in chains.items() if chain}

    def _set(self, name: str, parameter: nn.Parameter) -> None:
        owner_name, _, leaf = name.rpartition(".")
        self.model.get_submodule(owner_name)._parameters[leaf] = parameter

    def _original(self, name: str) -> nn.Parameter:
        original = self.originals.get(name)
        return self.model.get_parameter(name) if original is None else original

    def _apply(self) -> None:
        """Recompute every patched weight from its original and the adapters now applied."""
        patched = patch_weights(self._original, self.adapters.values())
        for name in [name for name in self.originals if name not in patched]:
            self._set(name, self.originals.pop(name))
        for name, weight in patched.items():
            self.originals.setdefault(name, self._original(name))
            self._set(name, nn.Parameter(weight, requires_grad=False))


def patch_weights(
    original: Callable[[str], torch.Tensor], applied: Iterable[tuple[Sequence[WeightPatch], float]]
) -> dict[str, torch.Tensor]:
    """Every parameter the applied patches change, by name: original + Σ strength · delta(original),
    each original converted to float32 once, the changes added in place, one cast back to its dtype.
    `original(name)` gives the unpatched tensor (a network's parameter or a state dict's entry)."""
    originals: dict[str, torch.Tensor] = {}
    changes: dict[str, tuple[torch.Tensor, bool]] = {}

    def original32(name: str) -> torch.Tensor:
        if name not in originals:
            originals[name] = original(name).detach().to(torch.float32, copy=True)
        return originals[name]

    for patches, strength in applied:
        for patch in patches:
            inputs = [original32(name) for name in patch.params]
            change = patch.delta(torch.cat(inputs) if len(inputs) > 1 else inputs[0])
            for name, part in zip(patch.params, change.split([i.shape[0] for i in inputs]), strict=True):
                changes[name] = _accumulate(changes.get(name), part, strength)
    return {
        name: original32(name).add_(change).to(original(name).dtype) for name, (change, _) in changes.items()
    }


def _accumulate(
    total: tuple[torch.Tensor, bool] | None, part: torch.Tensor, strength: float
) -> tuple[torch.Tensor, bool]:
    """(sum so far + strength * part, whether the sum is a tensor of our own to add into in place); a
    delta's own tensor is never changed in place, since it may be the adapter's stored tensor."""
    if total is None:
        return (part, False) if strength == 1 else (part * strength, True)
    tensor, owned = total
    if not owned:
        tensor = tensor.clone()
    return tensor.add_(part, alpha=strength), True
