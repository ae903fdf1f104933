"""Stand-alone VAE files (the `vae/` folder of A1111 and ComfyUI) in lienzo's (ldm) naming."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor

from lienzo.errors import ModelNotFoundError
from lienzo.io.checkpoints import read_model
from lienzo.io.diffusers_folder import DIFFUSERS_WEIGHTS, read_component_weights
from lienzo.io.formats import read_state_dict
from lienzo.io.keymaps.vae import vae_config_from_diffusers, vae_config_from_state_dict, vae_diffusers_to_ldm
from lienzo.io.layouts import VAE_PREFIX
from lienzo.models.vae import VAEConfig

VAE_IGNORED_PREFIXES = ("loss.", "model_ema.")
"""Training-only entries of ldm VAE files (the discriminator loss, an EMA copy)."""
DIFFUSERS_VAE_MARKERS = ("encoder.down_blocks.", "decoder.up_blocks.")


def read_vae(path: str | os.PathLike) -> dict[str, Tensor]:
    """A VAE's weights in lienzo's (ldm) naming from a VAE file in ldm or diffusers naming (`.safetensors`,
    `.pt`, `.ckpt`, `.bin`), a diffusers VAE folder, or a whole checkpoint or pipeline folder's VAE."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist; check the VAE's path or name")
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return read_model(path).vae
        return vae_diffusers_to_ldm(read_component_weights(path, DIFFUSERS_WEIGHTS))
    state = read_state_dict(path)
    if any(key.startswith(VAE_PREFIX) for key in state):
        state = {key[len(VAE_PREFIX) :]: value for key, value in state.items() if key.startswith(VAE_PREFIX)}
    state = {key: value for key, value in state.items() if not key.startswith(VAE_IGNORED_PREFIXES)}
    if any(key.startswith(DIFFUSERS_VAE_MARKERS) for key in state):
        state = vae_diffusers_to_ldm(state)
    return state


def read_vae_with_config(path: str | os.PathLike) -> tuple[VAEConfig, dict[str, Tensor]]:
    """A VAE file's weights (as `read_vae`) and its config: a diffusers folder's config.json, a model's
    spec, or for a bare file the shapes' config with SD's 32 norm groups and scaling factor (a graph
    rescales latents between scaling factors, so a stand-alone VAE's own factor only labels its latents)."""
    path = Path(path)
    if path.is_dir() and (path / "model_index.json").is_file():
        files = read_model(path)
        return files.spec.vae, files.vae
    state = read_vae(path)
    if path.is_dir():
        return vae_config_from_diffusers(
            json.loads((path / "config.json").read_text(encoding="utf-8"))
        ), state
    return vae_config_from_state_dict(state), state
