"""Gradient checkpointing (Chen et al. 2016): chosen blocks keep no activations for backward and run their
forward again instead, trading compute for memory; the model's code and weights are untouched."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lienzo.models.clip import CLIPTextModel
from lienzo.models.unet import UNetModel


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_modules(modules: list[nn.Module]) -> None:
    """Make each module's forward a checkpointed call of its own forward (an instance attribute, so only
    these module objects change; gradients still reach any trainable tensor they read)."""
    for module in modules:
        if "forward" not in vars(module):
            module.forward = functools.partial(_checkpointed, module.forward)


def checkpoint_unet(unet: UNetModel) -> None:
    """Checkpoint every input, middle and output block of the UNet."""
    checkpoint_modules([*unet.input_blocks, unet.middle_block, *unet.output_blocks])


def checkpoint_text_encoder(text_encoder: CLIPTextModel) -> None:
    """Checkpoint every transformer layer of a text encoder."""
    checkpoint_modules(list(text_encoder.text_model.encoder.layers))
