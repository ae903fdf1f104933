"""ControlNet files: diffusers folders, ldm single files (with or without `control_model.`), diffusers-named
single files, "difference" files (weights stored as the change from the base UNet) and Control-LoRAs
(low-rank changes to the base UNet's encoder), read into lienzo's
(ldm) naming with their config; the base model's family is checked against the ControlNet's shapes.
T2I-Adapter folders and files are recognised here too and read by `io/t2i_adapter_files.py`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from lienzo.errors import (
    CorruptCheckpointError,
    InvalidArgumentError,
    ModelNotFoundError,
    UnknownArchitectureError,
)
from lienzo.io.detect import read_json
from lienzo.io.diffusers_folder import DIFFUSERS_WEIGHTS, read_component_weights
from lienzo.io.formats import read_state_dict
from lienzo.io.keymaps.controlnet import (
    controlnet_config_from_diffusers,
    controlnet_config_from_state_dict,
    controlnet_diffusers_to_ldm,
)
from lienzo.io.t2i_adapter_files import (
    T2IAdapterFile,
    check_t2i_adapter_fits,
    is_t2i_adapter_folder,
    is_t2i_adapter_weights,
    read_t2i_adapter_folder,
    t2i_adapter_from_weights,
)
from lienzo.models.controlnet import ControlNetConfig
from lienzo.models.specs import VECTOR_VALUES, FamilySpec, family_spec
from lienzo.models.t2i_adapter import T2IAdapterConfig

CONTROL_PREFIX = "control_model."
DIFFERENCE_KEY = "difference"
"""The marker tensor of A1111's difference ControlNets (weights = ControlNet - base UNet)."""
CONTROL_LORA_KEY = "lora_controlnet"
"""The marker tensor of Stability AI's Control-LoRA files (low-rank changes to the base UNet's encoder)."""
ENCODER_PREFIXES = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")
DIFFUSERS_MARKER = "controlnet_cond_embedding.conv_in.weight"
LDM_MARKER = "input_hint_block.0.weight"
FAMILY_BY_CONTEXT = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
"""Published ControlNets' family by cross-attention width (SD 2's -v and base ControlNets are shared)."""
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
LEGACY_HASH_OFFSET, LEGACY_HASH_BYTES = 0x100000, 0x10000


@dataclass(frozen=True)
class ControlNetFile:
    """A ControlNet read from disk: config, weights in lienzo's naming, the layout it was stored in
    ("diffusers-folder", "ldm", "diffusers-file", "difference",
    "control-lora") and the family its shapes name (or None)."""

    config: ControlNetConfig
    state_dict: dict[str, Tensor]
    layout: str
    family: str | None


def legacy_model_hash(path: str | os.PathLike) -> str:
    """A1111's old 8-digit model hash (sha256 of 64 KiB from offset 1 MiB), which ControlNet names show."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        stream.seek(LEGACY_HASH_OFFSET)
        digest.update(stream.read(LEGACY_HASH_BYTES))
    return digest.hexdigest()[:8]


def read_controlnet(
    path: str | os.PathLike,
    *,
    base: FamilySpec | None = None,
    base_unet: Mapping[str, Tensor] | None = None,
) -> ControlNetFile | T2IAdapterFile:
    """A ControlNet (or T2I-Adapter) file or diffusers folder in lienzo's naming; with `base` (the model's
    spec) checked to fit it, and a difference file made whole with `base_unet` (the model's UNet weights)."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"ControlNet {path} does not exist; check the path or name")
    if path.is_dir() and is_t2i_adapter_folder(path):
        found = read_t2i_adapter_folder(path)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is not a diffusers ControlNet folder (config.json + {DIFFUSERS_WEIGHTS}.safetensors)"
            )
        config = controlnet_config_from_diffusers(read_json(path / "config.json"))
        weights = controlnet_diffusers_to_ldm(read_component_weights(path, DIFFUSERS_WEIGHTS))
        found = ControlNetFile(config, weights, "diffusers-folder", controlnet_family(config))
    else:
        state = read_state_dict(path)
        if is_t2i_adapter_weights(state):
            found = t2i_adapter_from_weights(state)
        else:
            found = _read_single_file(state, path, base, base_unet)
    if base is not None:
        check_controlnet_fits(found.config, base, path.name)
    return found


def _read_single_file(
    state: dict[str, Tensor], path: Path, base: FamilySpec | None, base_unet: Mapping[str, Tensor] | None
) -> ControlNetFile:
    """An ldm or diffusers-named ControlNet file's weights and config (heads from the family)."""
    difference = state.pop(DIFFERENCE_KEY, None) is not None
    control_lora = state.pop(CONTROL_LORA_KEY, None) is not None
    if any(key.startswith(CONTROL_PREFIX) for key in state):
        state = {
            key[len(CONTROL_PREFIX) :]: value
            for key, value in state.items()
            if key.startswith(CONTROL_PREFIX)
        }
    layout = "ldm"
    if control_lora:
        state, layout = _merge_control_lora(state, base_unet, path), "control-lora"
    if DIFFUSERS_MARKER in state:
        state, layout = controlnet_diffusers_to_ldm(state), "diffusers-file"
    if LDM_MARKER not in state:
        raise UnknownArchitectureError(
            f"{path} is not a ControlNet (no hint block: control_model.input_hint_block or "
            "controlnet_cond_embedding keys) nor a T2I-Adapter; IP-Adapter files are not read"
        )
    family = family_of_weights(state)
    spec = base or (family_spec(family) if family else None)
    if spec is None:
        raise UnknownArchitectureError(
            f"{path}: the ControlNet's shapes match no published family; load it with the model it is for "
            "(pipe.load_controlnet, or lienzo.load_controlnet(path, base=pipe))"
        )
    config = controlnet_config_from_state_dict(state, **_heads(spec))
    if difference:
        state, layout = _add_base(state, base_unet, path), "difference"
    return ControlNetFile(config, state, layout, family)


def _merge_control_lora(
    state: dict[str, Tensor], base_unet: Mapping[str, Tensor] | None, path: Path
) -> dict[str, Tensor]:
    """A Control-LoRA's whole weights (Stability AI's format, as ComfyUI reads it): the base UNet's
    encoder, the file's full tensors over it, and W + up·down for each `<module>.up` / `.down` pair."""
    if base_unet is None:
        raise InvalidArgumentError(
            f"{path} is a Control-LoRA (low-rank changes to its model's UNet encoder): load it with the "
            "model it is for (pipe.load_controlnet, or lienzo.load_controlnet(path, base=pipe))"
        )
    merged = {key: value for key, value in base_unet.items() if key.startswith(ENCODER_PREFIXES)}
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        module, _, part = key.rpartition(".")
        if part in ("up", "down"):
            pairs.setdefault(module, {})[part] = value
        else:
            merged[key] = value
    for module, parts in pairs.items():
        weight = merged.get(f"{module}.weight")
        if weight is None or set(parts) != {"up", "down"}:
            raise CorruptCheckpointError(
                f"{path}: the Control-LoRA entry {module} lacks its up or down half, or the model has no "
                f"{module}.weight; load it with the model it is for, or re-download it"
            )
        delta = parts["up"].flatten(1).float() @ parts["down"].flatten(1).float()
        merged[f"{module}.weight"] = (weight.float().cpu() + delta.reshape(weight.shape)).to(weight.dtype)
    return merged


def _heads(spec: FamilySpec) -> dict:
    """What a ControlNet's weights do not say (attention heads, norm groups, vector input): the family's."""
    unet = spec.unet
    heads = {
        "num_heads": unet.num_heads,
        "num_head_channels": unet.num_head_channels,
        "norm_groups": unet.norm_groups,
    }
    if spec.vector_conditioning is not None and spec.pooled_width is not None:
        heads["vector_input"] = (spec.pooled_width, VECTOR_VALUES[spec.vector_conditioning])
    return heads


def _add_base(
    state: dict[str, Tensor], base_unet: Mapping[str, Tensor] | None, path: Path
) -> dict[str, Tensor]:
    """A difference file's weights made whole: each tensor the base UNet also has gets the base added."""
    if base_unet is None:
        raise InvalidArgumentError(
            f"{path} is a difference ControlNet (stored relative to its base model): load it with the model "
            "it was made from (pipe.load_controlnet, or lienzo.load_controlnet(path, base=pipe))"
        )
    whole = {}
    for key, value in state.items():
        original = base_unet.get(key)
        if original is not None and original.shape != value.shape:
            raise InvalidArgumentError(
                f"{path} is a difference ControlNet whose {key} {tuple(value.shape)} does not match the "
                f"model's {tuple(original.shape)}; load it with the model it was made from"
            )
        whole[key] = value if original is None else (value.float() + original.float().cpu()).to(value.dtype)
    return whole


def family_of_weights(state: Mapping[str, Tensor]) -> str | None:
    """The published family a ControlNet's cross-attention width (and vector input) names, or None."""
    context = next(
        (value.shape[1] for key, value in state.items() if key.endswith("attn2.to_k.weight")), None
    )
    family = FAMILY_BY_CONTEXT.get(int(context)) if context is not None else None
    if (family == "sdxl") != ("label_emb.0.0.weight" in state):
        return None
    return family


def controlnet_family(config: ControlNetConfig) -> str | None:
    """The published family a ControlNet config's widths name, or None for other sizes."""
    family = FAMILY_BY_CONTEXT.get(config.unet.context_dim)
    if (family == "sdxl") != (config.unet.adm_in_channels is not None):
        return None
    return family


def _describe(context_dim: int, adm: int | None) -> str:
    """A model's family for people: its published name where the widths give one."""
    family = FAMILY_BY_CONTEXT.get(context_dim)
    if family is not None and (family == "sdxl") == (adm is not None):
        return f"{FAMILY_LABELS[family]} (cross-attention width {context_dim})"
    vector = "" if adm is None else f", vector input {adm}"
    return f"cross-attention width {context_dim}{vector}"


def check_controlnet_fits(
    config: ControlNetConfig | T2IAdapterConfig, spec: FamilySpec, name: str = "the ControlNet"
) -> None:
    """Refuse a ControlNet whose encoder or latent width differs from the model's or whose hint block does
    not match the model's VAE factor (or a T2I-Adapter whose features do not fit), naming both families."""
    if isinstance(config, T2IAdapterConfig):
        check_t2i_adapter_fits(config, spec, name)
        return
    unet, base = config.unet, spec.unet
    if (unet.context_dim, unet.adm_in_channels) != (base.context_dim, base.adm_in_channels):
        raise InvalidArgumentError(
            f"{name} is a ControlNet for {_describe(unet.context_dim, unet.adm_in_channels)}, but the model "
            f"is {spec.name}, {_describe(base.context_dim, base.adm_in_channels)}; use a ControlNet made for "
            f"{spec.name}"
        )
    shape = (unet.model_channels, unet.channel_mult, unet.num_res_blocks)
    expected = (base.model_channels, base.channel_mult, base.num_res_blocks)
    if shape != expected:
        raise InvalidArgumentError(
            f"{name} has encoder blocks {shape} (channels, multipliers, blocks per level) but the "
            f"{spec.name} model's UNet has {expected}; use a ControlNet made for this model"
        )
    if unet.in_channels != spec.vae.embed_dim:
        raise InvalidArgumentError(
            f"{name} reads {unet.in_channels}-channel latents but the {spec.name} model's latents have "
            f"{spec.vae.embed_dim} channels; use a ControlNet made for this model"
        )
    if config.downscale_factor != spec.vae.downscale_factor:
        raise InvalidArgumentError(
            f"{name}'s hint block shrinks control images {config.downscale_factor}x but the model's VAE "
            f"{spec.vae.downscale_factor}x; use a ControlNet made for this model"
        )
