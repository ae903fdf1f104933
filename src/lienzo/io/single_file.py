"""Single-file ldm/sgm checkpoints: split into components in lienzo's naming, and joined back."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from lienzo.errors import CorruptCheckpointError
from lienzo.io.detect import METADATA_FAMILY_KEY, detect_checkpoint_family
from lienzo.io.formats import read_safetensors_metadata, read_state_dict, write_safetensors
from lienzo.io.keymaps.clip import (
    clip_config_from_state_dict,
    clip_hf_canonical,
    clip_hf_to_openclip,
    clip_openclip_to_hf,
)
from lienzo.io.keymaps.unet import unet_config_from_state_dict
from lienzo.io.keymaps.vae import vae_config_from_state_dict
from lienzo.io.layouts import UNET_PREFIX, V_PREDICTION_KEY, VAE_PREFIX, TextEncoderLayout, family_layout
from lienzo.io.model_files import (
    ModelFiles,
    cast_state_dict,
    config_from_json,
    config_to_json,
    spec_with_configs,
)
from lienzo.models.clip import CLIPTextConfig
from lienzo.models.specs import VECTOR_VALUES, FamilySpec, NoiseScheduleConfig, family_spec
from lienzo.models.unet import UNetConfig
from lienzo.models.vae import VAEConfig

METADATA_UNET_KEY = "lienzo.unet"
METADATA_VAE_KEY = "lienzo.vae"
METADATA_TEXT_KEY = "lienzo.text_encoder.{}"
METADATA_SCHEDULE_KEY = "lienzo.schedule"
ALPHAS_CUMPROD_KEY = "alphas_cumprod"
ZERO_SNR_LAST_ALPHA_CUMPROD = 1e-6
"""An ldm checkpoint whose last stored alphas_cumprod is below this was trained with zero terminal SNR."""
HF_POSITION_IDS = "text_model.embeddings.position_ids"
HF_PROJECTION = "text_projection.weight"
HF_TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"
HF_LAYER_KEY = re.compile(r"text_model\.encoder\.layers\.(\d+)\.")
TEXT_ACTIVATION = {"hf": "quick_gelu", "openclip": "gelu"}


def read_single_file(path: str | Path, *, family: str | None = None) -> ModelFiles:
    """Read a `.safetensors`/`.ckpt` checkpoint into ModelFiles; `family` overrides detection."""
    path = Path(path)
    state_dict = read_state_dict(path)
    metadata = read_safetensors_metadata(path) if path.suffix.lower() == ".safetensors" else {}
    family = family or detect_checkpoint_family(state_dict, metadata)
    reference = family_spec(family)
    unet = _strip_prefix(state_dict, UNET_PREFIX)
    vae = _strip_prefix(state_dict, VAE_PREFIX)
    layouts = family_layout(family).text_encoders
    text_encoders = [
        _read_text_encoder(state_dict, layout, tower.config, metadata.get(METADATA_TEXT_KEY.format(index)))
        for index, (layout, tower) in enumerate(zip(layouts, reference.text_encoders, strict=True))
    ]
    if not unet or not vae or not all(text_encoders):
        raise CorruptCheckpointError(
            f"{path} lacks part of a {family} model (UNet, VAE or a text encoder); "
            "use a full checkpoint, or pass the right --family"
        )
    text_configs = [
        _text_config(text, layout, metadata.get(METADATA_TEXT_KEY.format(index)))
        for index, (text, layout) in enumerate(zip(text_encoders, layouts, strict=True))
    ]
    spec = spec_with_configs(family, reference.unet, _vae_config(vae, reference, metadata), text_configs)
    spec = replace(
        spec, unet=_unet_config(unet, spec, metadata), schedule=_schedule(state_dict, spec, metadata)
    )
    return ModelFiles(spec, unet, vae, text_encoders, [None] * len(text_encoders), "single-file")


def write_single_file(files: ModelFiles, path: str | Path, *, dtype: torch.dtype | None = None) -> None:
    """Write one `.safetensors` checkpoint in ldm/sgm layout with lienzo's configs in its metadata."""
    write_safetensors(path, join_single_file(files, dtype=dtype), single_file_metadata(files))


def join_single_file(files: ModelFiles, *, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The ldm/sgm single-file state dict of a model: prefixed UNet and VAE, text towers in their layout."""
    joined = {UNET_PREFIX + key: value for key, value in files.unet.items()}
    joined.update({VAE_PREFIX + key: value for key, value in files.vae.items()})
    for layout, text in zip(family_layout(files.family).text_encoders, files.text_encoders, strict=True):
        text = {key: value for key, value in text.items() if key != HF_POSITION_IDS}
        tower = clip_hf_to_openclip(text) if layout.style == "openclip" else text
        joined.update({layout.prefix + key: value for key, value in tower.items()})
    if files.spec.prediction == "v":
        joined[V_PREDICTION_KEY] = torch.tensor([])
    return cast_state_dict(joined, dtype)


def single_file_metadata(files: ModelFiles) -> dict[str, str]:
    """The safetensors metadata lienzo writes: family, noise schedule and every component config as JSON."""
    metadata = {
        METADATA_FAMILY_KEY: files.family,
        METADATA_SCHEDULE_KEY: config_to_json(files.spec.schedule),
        METADATA_UNET_KEY: config_to_json(files.spec.unet),
        METADATA_VAE_KEY: config_to_json(files.spec.vae),
    }
    for index, tower in enumerate(files.spec.text_encoders):
        metadata[METADATA_TEXT_KEY.format(index)] = config_to_json(tower.config)
    return metadata


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _read_text_encoder(
    state_dict: dict[str, torch.Tensor],
    layout: TextEncoderLayout,
    reference: CLIPTextConfig,
    stored: str | None,
) -> dict[str, torch.Tensor]:
    """One text tower in transformers naming, trimmed to the layers and projection the model uses."""
    tower = _strip_prefix(state_dict, layout.prefix)
    if not tower:
        return {}
    if layout.style == "openclip":
        tower = clip_openclip_to_hf(tower)
    else:
        tower = clip_hf_canonical(tower)
    if stored is not None:
        config = config_from_json(CLIPTextConfig, stored)
        layers, keep_projection = config.num_hidden_layers, config.projection_dim is not None
    else:
        layers = layers_used(tower, layout, reference)
        keep_projection = reference.projection_dim is not None
    if not keep_projection:
        tower.pop(HF_PROJECTION, None)
    return {
        key: value
        for key, value in tower.items()
        if not (match := HF_LAYER_KEY.match(key)) or int(match.group(1)) < layers
    }


def layers_used(tower: dict[str, torch.Tensor], layout: TextEncoderLayout, reference: CLIPTextConfig) -> int:
    """How many of a stored tower's layers the model runs (SD 2 files carry one more than it uses).

    A tower of the family's reference width runs at most the reference's layer count, so files with
    or without the unused final layer both read right; other widths drop the layout's unused layers.
    """
    stored = _layer_count(tower)
    if tower[HF_TOKEN_EMBEDDING].shape[1] == reference.hidden_size:
        return min(stored, reference.num_hidden_layers)
    return stored - layout.unused_final_layers


def _layer_count(tower: dict[str, torch.Tensor]) -> int:
    indices = {int(match.group(1)) for key in tower if (match := HF_LAYER_KEY.match(key))}
    return max(indices) + 1 if indices else 0


def _unet_config(unet: dict[str, torch.Tensor], spec: FamilySpec, metadata: dict[str, str]) -> UNetConfig:
    """The stored UNet config, else the weights' with the family's attention heads and pooled text width."""
    if METADATA_UNET_KEY in metadata:
        return config_from_json(UNetConfig, metadata[METADATA_UNET_KEY])
    vector_input = None
    if spec.vector_conditioning is not None and spec.pooled_width is not None:
        vector_input = (spec.pooled_width, VECTOR_VALUES[spec.vector_conditioning])
    return unet_config_from_state_dict(
        unet,
        num_heads=spec.unet.num_heads,
        num_head_channels=spec.unet.num_head_channels,
        vector_input=vector_input,
    )


def _schedule(
    state_dict: dict[str, torch.Tensor], spec: FamilySpec, metadata: dict[str, str]
) -> NoiseScheduleConfig:
    """The stored schedule, else the family's, with zero terminal SNR when the ldm alphas_cumprod end at 0."""
    if METADATA_SCHEDULE_KEY in metadata:
        return config_from_json(NoiseScheduleConfig, metadata[METADATA_SCHEDULE_KEY])
    alphas_cumprod = state_dict.get(ALPHAS_CUMPROD_KEY)
    if alphas_cumprod is not None and alphas_cumprod.numel() > 0:
        if float(alphas_cumprod[-1]) < ZERO_SNR_LAST_ALPHA_CUMPROD:
            return replace(spec.schedule, zero_terminal_snr=True)
    return spec.schedule


def _vae_config(vae: dict[str, torch.Tensor], reference: FamilySpec, metadata: dict[str, str]) -> VAEConfig:
    if METADATA_VAE_KEY in metadata:
        return config_from_json(VAEConfig, metadata[METADATA_VAE_KEY])
    return vae_config_from_state_dict(vae, scaling_factor=reference.vae.scaling_factor)


def _text_config(
    text: dict[str, torch.Tensor], layout: TextEncoderLayout, stored: str | None
) -> CLIPTextConfig:
    if stored is not None:
        return config_from_json(CLIPTextConfig, stored)
    return clip_config_from_state_dict(text, hidden_act=TEXT_ACTIVATION[layout.style])
