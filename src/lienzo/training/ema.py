"""Exponential moving average of trainable weights (Polyak & Juditsky 1992), as used for SD checkpoints."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copies of the trainable parameters, updated as shadow = d * shadow + (1 - d) * param,
    with d = min(decay, (1 + n) / (10 + n)) after n earlier updates (TensorFlow's and diffusers' warm-up),
    so the average forgets the random initialisation within the first few hundred steps."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        self.decay = decay
        self.shadow = {
            name: param.detach().float().clone()
            for name, param in named_trainable_parameters(modules).items()
        }

    @torch.no_grad()
    def update(self, modules: dict[str, nn.Module], updates_before: int) -> None:
        """Move each shadow weight a step (1 - d) towards its current parameter."""
        decay = min(self.decay, (1 + updates_before) / (10 + updates_before))
        for name, param in named_trainable_parameters(modules).items():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, modules: dict[str, nn.Module]) -> None:
        """Overwrite the trainable parameters with the averaged weights (for sampling or export)."""
        for name, param in named_trainable_parameters(modules).items():
            param.copy_(self.shadow[name].to(param.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights by qualified name ("unet.out.2.weight")."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore shadow weights saved by `state_dict`."""
        for name, value in state.items():
            self.shadow[name].copy_(value)


def named_trainable_parameters(modules: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    """Every parameter with requires_grad, keyed "<module name>.<parameter name>"."""
    return {
        f"{module_name}.{name}": param
        for module_name, module in modules.items()
        for name, param in module.named_parameters()
        if param.requires_grad
    }
