"""Tiny random T2I-Adapters for tests: diffusers' T2IAdapter of tiny configs, lienzo's adapter with the same
weights, diffusers folders cached for the session, and a tiny SDXL folder whose UNet has SDXL's 3 levels."""

from __future__ import annotations

import functools
import shutil
from dataclasses import replace
from pathlib import Path

import diffusers
import torch

from lienzo.io.keymaps.t2i_adapter import t2i_adapter_config_from_diffusers, t2i_adapter_diffusers_to_original
from lienzo.io.keymaps.unet import unet_config_to_diffusers
from lienzo.models.t2i_adapter import T2IAdapter
from tiny_models import TINY_UNET, randomize_parameters, session_folder, tiny_pipeline_folder, tiny_spec

ADAPTERS = {
    "full": {"adapter_type": "full_adapter", "channels": [32, 64], "downscale_factor": 2},
    "xl": {"adapter_type": "full_adapter_xl", "channels": [32, 64, 64, 64], "downscale_factor": 4},
    "light": {"adapter_type": "light_adapter", "channels": [32, 64], "num_res_blocks": 3,
              "downscale_factor": 2},
}  # fmt: skip
"""Tiny adapters: "full" fits the tiny SD 1 UNet (2 levels, VAE factor 2), "xl" a 3-level UNet whose first
level has no attention (SDXL's layout); "light" has one output more than widths (the last repeats)."""
SINGLE_FILE_ADAPTERS = {
    "full": ADAPTERS["full"],
    "light": ADAPTERS["light"],
    "xl16": {**ADAPTERS["xl"], "downscale_factor": 16},
}
"""Single files do not name their variant: a full adapter that unshuffles 16x is the SDXL one (as ComfyUI)."""
SDXL_LEVELS = {"channel_mult": (1, 2, 2), "transformer_depth": (0, 2, 2)}
"""The tiny SDXL UNet with a third level, so the "xl" adapter fits it as SDXL adapters fit SDXL."""
UNETS = {"full": TINY_UNET, "xl": replace(TINY_UNET, channel_mult=(1, 2, 2), transformer_depth=(0, 1, 1))}


def reference_adapter(name: str, seed: int = 1) -> diffusers.T2IAdapter:
    """diffusers' T2IAdapter of a tiny config with every parameter random."""
    adapter = diffusers.T2IAdapter(**{**ADAPTERS, **SINGLE_FILE_ADAPTERS}[name])
    randomize_parameters(adapter, seed)
    return adapter.eval()


def lienzo_adapter(reference: diffusers.T2IAdapter) -> T2IAdapter:
    """lienzo's adapter loaded strictly with the reference's weights through the key map."""
    config = t2i_adapter_config_from_diffusers(dict(reference.config))
    model = T2IAdapter(config).eval()
    model.load_state_dict(t2i_adapter_diffusers_to_original(reference.state_dict(), config), strict=True)
    return model


@functools.cache
def adapter_folder(name: str, seed: int = 1) -> Path:
    """The tiny adapter saved as a diffusers folder (do not modify it)."""
    folder = session_folder("t2i") / f"{name}-adapter-{seed}"
    reference_adapter(name, seed).save_pretrained(folder)
    return folder


@functools.cache
def sdxl_three_level_folder() -> Path:
    """The tiny SDXL pipeline folder with a seeded 3-level UNet in place of its own (do not modify it)."""
    folder = session_folder("t2i") / "sdxl-3-levels"
    shutil.copytree(tiny_pipeline_folder("sdxl"), folder)
    spec = tiny_spec("sdxl")
    torch.manual_seed(4)
    unet = diffusers.UNet2DConditionModel(
        **unet_config_to_diffusers(replace(spec.unet, **SDXL_LEVELS)),
        sample_size=spec.resolution // spec.vae.downscale_factor,
    )
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet")
    return folder
