"""Model family detection from a single file's keys and shapes or from a diffusers folder's configs."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch

from lienzo.errors import CorruptCheckpointError, ModelNotFoundError, UnknownArchitectureError
from lienzo.io.layouts import LAYOUTS, UNET_PREFIX, V_PREDICTION_KEY, VAE_PREFIX
from lienzo.models.specs import KNOWN_FAMILIES, VARIANTS, FamilyName, variant_in_channels

METADATA_FAMILY_KEY = "lienzo.family"
UNET_INPUT_CONV = "input_blocks.0.0.weight"
V_PREDICTION_FAMILIES = {"sd2": "sd2-v"}
"""The family a v-prediction marker (single files) or prediction_type (folders) turns a base family into."""
MODEL_FOLDER_HINT = (
    "a model folder must be in diffusers layout: model_index.json plus unet/, vae/, text_encoder/ "
    "(and text_encoder_2/ for SDXL) with config.json and weights; or give a .safetensors/.ckpt file"
)
DEFAULT_LATENT_CHANNELS = 4
VAE_QUANT_CONV = "quant_conv.weight"
SCHEDULER_CONFIG = Path("scheduler", "scheduler_config.json")


def detect_checkpoint_family(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> str:
    """The family of an ldm/sgm single-file checkpoint from its text-encoder prefixes and UNet input conv."""
    if metadata and METADATA_FAMILY_KEY in metadata:
        return metadata[METADATA_FAMILY_KEY]
    base = _checkpoint_base(state_dict)
    in_channels = state_dict[UNET_PREFIX + UNET_INPUT_CONV].shape[1]
    quant_conv = state_dict.get(VAE_PREFIX + VAE_QUANT_CONV)
    latent = DEFAULT_LATENT_CHANNELS if quant_conv is None else quant_conv.shape[0] // 2
    variant = _variant_for(in_channels, latent, describe=f"a UNet with {in_channels} input channels")
    if V_PREDICTION_KEY in state_dict:
        base = V_PREDICTION_FAMILIES.get(base, base)
    return FamilyName(base, variant).name


def detect_folder_family(folder: Path) -> str:
    """The family of a diffusers folder from model_index.json and its UNet, text and scheduler configs."""
    index = read_model_index(folder)
    class_name = str(index.get("_class_name", ""))
    if not class_name.startswith("StableDiffusion"):
        raise UnknownArchitectureError(
            f"{folder} holds a {class_name or 'unnamed'} pipeline, which lienzo does not run; "
            f"supported families: {KNOWN_FAMILIES}"
        )
    unet = read_json(folder / "unet" / "config.json")
    in_channels = int(unet.get("in_channels", DEFAULT_LATENT_CHANNELS))
    latent = int(read_json(folder / "vae" / "config.json").get("latent_channels", DEFAULT_LATENT_CHANNELS))
    variant = (
        "depth"
        if "Depth2Img" in class_name
        else _variant_for(in_channels, latent, describe=f"{folder}: a UNet with {in_channels} input channels")
    )
    if unet.get("addition_embed_type") == "text_time":
        has_first_encoder = _has_component(index, "text_encoder")
        return FamilyName("sdxl" if has_first_encoder else "sdxl-refiner", variant).name
    text_encoder = read_json(folder / "text_encoder" / "config.json")
    base = "sd2" if text_encoder.get("hidden_act") == "gelu" else "sd1"
    if read_scheduler_config(folder).get("prediction_type") == "v_prediction":
        base = V_PREDICTION_FAMILIES.get(base, base)
    return FamilyName(base, variant).name


def read_scheduler_config(folder: Path) -> dict:
    """A diffusers folder's scheduler/scheduler_config.json, or {} when it has none."""
    path = folder / SCHEDULER_CONFIG
    return read_json(path) if path.is_file() else {}


def read_model_index(folder: Path) -> dict:
    """A diffusers folder's model_index.json, or ModelNotFoundError saying what a model folder holds."""
    if not folder.exists():
        raise ModelNotFoundError(f"{folder} does not exist; check the path or download the model first")
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ModelNotFoundError(f"{folder} is not a model folder: {MODEL_FOLDER_HINT}")
    return read_json(index_path)


def read_json(path: Path) -> dict:
    """A JSON object file, with user-facing errors for a missing or malformed file."""
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; {MODEL_FOLDER_HINT}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptCheckpointError(
            f"{path} is not valid JSON ({error}); re-download or re-export it"
        ) from None
    if not isinstance(value, dict):
        raise CorruptCheckpointError(f"{path} does not hold a JSON object; re-download or re-export it")
    return value


def _has_component(index: Mapping, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None


def _checkpoint_base(state_dict: Mapping[str, torch.Tensor]) -> str:
    if UNET_PREFIX + UNET_INPUT_CONV in state_dict:
        for base, layout in LAYOUTS.items():
            if base not in V_PREDICTION_FAMILIES.values() and all(
                _has_prefix(state_dict, tower.prefix) for tower in layout.text_encoders
            ):
                return base
    raise UnknownArchitectureError(
        f"the state dict matches no supported model; found keys under {_key_summary(state_dict)}. "
        f"Supported: {KNOWN_FAMILIES}, as full ldm/sgm checkpoints (model.diffusion_model.*, "
        "first_stage_model.* and the text encoder) or diffusers folders"
    )


def _has_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in state_dict)


def _variant_for(in_channels: int, latent_channels: int, *, describe: str) -> str | None:
    """The variant whose UNet input is `in_channels` wide over a `latent_channels` latent (None: base)."""
    for variant in (None, *VARIANTS):
        if variant_in_channels(variant, latent_channels) == in_channels:
            return variant
    known = ", ".join(
        f"{variant_in_channels(variant, latent_channels)} ({variant or 'base'})"
        for variant in (None, *VARIANTS)
    )
    raise UnknownArchitectureError(
        f"{describe} is not supported over a {latent_channels}-channel latent; "
        f"known input channels: {known}; supported: {KNOWN_FAMILIES}"
    )


def _key_summary(state_dict: Mapping[str, torch.Tensor], limit: int = 8) -> str:
    prefixes = Counter(".".join(key.split(".")[:2]) for key in state_dict)
    if not prefixes:
        return "nothing (the state dict is empty)"
    shown = ", ".join(f"{prefix}.* ({count})" for prefix, count in prefixes.most_common(limit))
    more = len(prefixes) - limit
    return shown + (f" and {more} more" if more > 0 else "")
