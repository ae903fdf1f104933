"""Diffusers model folders: model_index.json plus one subfolder per component, read and written."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from lienzo.errors import CorruptCheckpointError, InvalidArgumentError, ModelNotFoundError
from lienzo.io.detect import (
    MODEL_FOLDER_HINT,
    SCHEDULER_CONFIG,
    detect_folder_family,
    read_json,
    read_model_index,
    read_scheduler_config,
)
from lienzo.io.formats import read_state_dict, write_safetensors
from lienzo.io.keymaps.clip import (
    clip_config_from_transformers,
    clip_config_to_transformers,
    clip_hf_canonical,
)
from lienzo.io.keymaps.scheduler import schedule_from_diffusers, scheduler_to_diffusers
from lienzo.io.keymaps.unet import (
    unet_config_from_diffusers,
    unet_config_to_diffusers,
    unet_diffusers_to_ldm,
    unet_ldm_to_diffusers,
)
from lienzo.io.keymaps.vae import (
    vae_config_from_diffusers,
    vae_config_to_diffusers,
    vae_diffusers_to_ldm,
    vae_ldm_to_diffusers,
)
from lienzo.io.layouts import family_layout
from lienzo.io.model_files import ModelFiles, cast_state_dict, check_vector_conditioning, spec_with_configs
from lienzo.text.tokenizer import CLIPTokenizer

DIFFUSERS_VERSION = "0.30.0"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
TRANSFORMERS_WEIGHTS = "model"
WEIGHT_FILE_SUFFIXES = (".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin")


def read_diffusers_folder(folder: str | Path, *, family: str | None = None) -> ModelFiles:
    """Read a diffusers folder into ModelFiles (weights in lienzo's naming); `family` overrides detection."""
    folder = Path(folder)
    read_model_index(folder)
    family = family or detect_folder_family(folder)
    layout = family_layout(family)
    unet_json = read_json(folder / "unet" / "config.json")
    unet_config = unet_config_from_diffusers(unet_json)
    vae_config = vae_config_from_diffusers(read_json(folder / "vae" / "config.json"))
    unet = unet_diffusers_to_ldm(read_component_weights(folder / "unet", DIFFUSERS_WEIGHTS))
    vae = vae_diffusers_to_ldm(read_component_weights(folder / "vae", DIFFUSERS_WEIGHTS))
    text_configs, text_encoders, tokenizer_folders = [], [], []
    for tower in layout.text_encoders:
        component = folder / tower.component
        text_configs.append(clip_config_from_transformers(read_json(component / "config.json")))
        text_encoders.append(clip_hf_canonical(read_component_weights(component, TRANSFORMERS_WEIGHTS)))
        tokenizer = folder / tower.tokenizer_component
        tokenizer_folders.append(tokenizer if tokenizer.is_dir() else None)
    spec = spec_with_configs(family, unet_config, vae_config, text_configs)
    schedule = schedule_from_diffusers(
        read_scheduler_config(folder), spec.schedule, str(folder / SCHEDULER_CONFIG)
    )
    spec = replace(spec, schedule=schedule)
    check_vector_conditioning(spec, str(folder / "unet"))
    if "sample_size" in unet_json:
        spec = replace(spec, resolution=int(unet_json["sample_size"]) * vae_config.downscale_factor)
    return ModelFiles(spec, unet, vae, text_encoders, tokenizer_folders, "diffusers")


def write_diffusers_folder(
    files: ModelFiles, folder: str | Path, *, dtype: torch.dtype | None = None
) -> None:
    """Write a folder diffusers' `from_pretrained` loads: model_index.json, components, scheduler."""
    folder = Path(folder)
    layout = family_layout(files.family)
    variant = files.spec.variant
    if variant not in layout.pipeline_classes:
        raise InvalidArgumentError(
            f"diffusers has no pipeline for {files.family}; write it as a single file (--format single-file)"
        )
    folder.mkdir(parents=True)
    index: dict[str, object] = {
        "_class_name": layout.pipeline_classes[variant],
        "_diffusers_version": DIFFUSERS_VERSION,
        **layout.pipeline_options,
    }
    for unused in layout.unused_components:
        index[unused] = [None, None]
    if variant == "depth":
        index.update(depth_estimator=[None, None], feature_extractor=[None, None])
    index["unet"] = ["diffusers", "UNet2DConditionModel"]
    unet_config = unet_config_to_diffusers(files.spec.unet)
    unet_config["sample_size"] = files.spec.resolution // files.spec.vae.downscale_factor
    _write_component(
        folder / "unet",
        unet_config,
        "UNet2DConditionModel",
        unet_ldm_to_diffusers(files.unet, files.spec.unet),
        DIFFUSERS_WEIGHTS,
        dtype,
    )
    index["vae"] = ["diffusers", "AutoencoderKL"]
    _write_component(
        folder / "vae",
        vae_config_to_diffusers(files.spec.vae),
        "AutoencoderKL",
        vae_ldm_to_diffusers(files.vae, files.spec.vae),
        DIFFUSERS_WEIGHTS,
        dtype,
    )
    towers = zip(
        layout.text_encoders,
        files.spec.text_encoders,
        files.text_encoders,
        files.tokenizer_folders,
        strict=True,
    )
    for tower_layout, tower, weights, tokenizer_folder in towers:
        config = clip_config_to_transformers(tower.config)
        index[tower_layout.component] = ["transformers", config["architectures"][0]]
        _write_component(folder / tower_layout.component, config, None, weights, TRANSFORMERS_WEIGHTS, dtype)
        tokenizer_target = folder / tower_layout.tokenizer_component
        if tokenizer_folder is not None:
            shutil.copytree(tokenizer_folder, tokenizer_target)
        else:
            CLIPTokenizer.from_bundled(pad_token=tower.pad_token).save(tokenizer_target)
        index[tower_layout.tokenizer_component] = ["transformers", "CLIPTokenizer"]
    scheduler = {**scheduler_to_diffusers(files.spec), "_diffusers_version": DIFFUSERS_VERSION}
    index["scheduler"] = ["diffusers", scheduler["_class_name"]]
    _write_json(folder / SCHEDULER_CONFIG, scheduler)
    _write_json(folder / "model_index.json", index)


def read_component_weights(component: Path, stem: str) -> dict[str, torch.Tensor]:
    """A component's weights: `<stem>.safetensors` first, then its fp16 variant, then `.bin` files."""
    for suffix in WEIGHT_FILE_SUFFIXES:
        candidate = component / f"{stem}{suffix}"
        if candidate.is_file():
            return read_state_dict(candidate)
    if not component.is_dir():
        raise ModelNotFoundError(f"{component} is missing; {MODEL_FOLDER_HINT}")
    raise CorruptCheckpointError(
        f"{component} has no weights ({stem}.safetensors or {stem}.bin); re-download or re-export the model"
    )


def _write_component(
    component: Path,
    config: dict,
    class_name: str | None,
    weights: dict[str, torch.Tensor],
    stem: str,
    dtype: torch.dtype | None,
) -> None:
    component.mkdir()
    if class_name is not None:
        config = {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION, **config}
    _write_json(component / "config.json", config)
    write_safetensors(component / f"{stem}.safetensors", cast_state_dict(weights, dtype), {"format": "pt"})


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
