"""Tiny random ControlNets for tests: diffusers' ControlNetModel built from a tiny family's UNet with
every parameter randomized (zero convolutions included), saved as a diffusers folder and as ldm files."""

from __future__ import annotations

import functools
from pathlib import Path

import diffusers
import numpy as np
import torch
from PIL import Image

from lienzo.io.formats import write_safetensors
from lienzo.io.keymaps.controlnet import controlnet_diffusers_to_ldm
from lienzo.models.specs import FamilySpec
from tiny_models import randomize_parameters, session_folder, tiny_pipeline_folder, tiny_spec

CONTROL_PREFIX = "control_model."


def hint_widths(spec: FamilySpec) -> tuple[int, ...]:
    """Hint block widths whose downsamplings match the family's tiny VAE factor."""
    downsamplings = spec.vae.downscale_factor.bit_length() - 1
    return (16, 32, 96, 256)[: downsamplings + 1]


@functools.cache
def tiny_controlnet(family: str, seed: int) -> diffusers.ControlNetModel:
    """A diffusers ControlNet for the tiny `family` model with random weights (do not modify it)."""
    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_pipeline_folder(family) / "unet")
    controlnet = diffusers.ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=hint_widths(tiny_spec(family))
    )
    randomize_parameters(controlnet, seed)
    return controlnet.eval()


@functools.cache
def controlnet_folder(family: str, seed: int) -> Path:
    """The tiny ControlNet saved as a diffusers folder."""
    folder = session_folder("controlnet") / f"{family}-{seed}"
    tiny_controlnet(family, seed).save_pretrained(folder)
    return folder


def ldm_weights(family: str, seed: int) -> dict[str, torch.Tensor]:
    """The tiny ControlNet's weights in ldm naming (no prefix), converted by lienzo's key map."""
    return controlnet_diffusers_to_ldm(tiny_controlnet(family, seed).state_dict())


@functools.cache
def controlnet_file(family: str, seed: int, prefix: str = CONTROL_PREFIX) -> Path:
    """The tiny ControlNet as an ldm single file, keys under `prefix`."""
    path = session_folder("controlnet") / f"{family}-{seed}-{len(prefix)}.safetensors"
    write_safetensors(path, {prefix + key: value for key, value in ldm_weights(family, seed).items()})
    return path


def control_image(size: int, seed: int) -> Image.Image:
    """A random RGB control image of size x size pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)
