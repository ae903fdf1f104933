"""ControlNet key and config maps between the ldm `cldm` layout and diffusers' ControlNetModel.

The encoder's keys go through the UNet maps (io/keymaps/unet.py); the ControlNet's own parts are derived
from the architecture: the hint block's convolutions (`input_hint_block.{0, 2, ..., 4k-2}` <->
`controlnet_cond_embedding.conv_in`, `.blocks.{j}`, `.conv_out`, k = its number of widths), one zero
convolution per skip connection (`zero_convs.{i}.0` <-> `controlnet_down_blocks.{i}`) and the middle
one (`middle_block_out.0` <-> `controlnet_mid_block`).
"""

from __future__ import annotations

import re
from dataclasses import replace

from torch import Tensor

from lienzo.errors import UnknownArchitectureError
from lienzo.io.keymaps.unet import (
    unet_config_from_diffusers,
    unet_config_from_state_dict,
    unet_config_to_diffusers,
    unet_diffusers_to_ldm,
    unet_ldm_to_diffusers,
)
from lienzo.models.controlnet import ControlNetConfig

HINT_CONV = re.compile(r"input_hint_block\.(\d+)\.weight$")
ZERO_CONV = re.compile(r"zero_convs\.(\d+)\.0\.(.+)$")
DIFFUSERS_ZERO_CONV = re.compile(r"controlnet_down_blocks\.(\d+)\.(.+)$")
HINT_PREFIX = "controlnet_cond_embedding."
DIFFUSERS_ONLY_KEYS = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")
LDM_ONLY_KEYS = ("input_hint_block.", "zero_convs.", "middle_block_out.")
UNET_ONLY_CONFIG = ("_class_name", "out_channels", "up_block_types", "center_input_sample")


def hint_pairs(widths: int) -> list[tuple[str, str]]:
    """(ldm prefix, diffusers prefix) of each convolution of a hint block with `widths` widths."""
    pairs = [("input_hint_block.0.", f"{HINT_PREFIX}conv_in.")]
    pairs += [(f"input_hint_block.{2 + 2 * j}.", f"{HINT_PREFIX}blocks.{j}.") for j in range(2 * widths - 2)]
    pairs.append((f"input_hint_block.{4 * widths - 2}.", f"{HINT_PREFIX}conv_out."))
    return pairs


def _hint_widths_ldm(sd: dict[str, Tensor]) -> int:
    """How many widths the stored hint block has (its convolutions come in pairs)."""
    convs = [int(m[1]) for key in sd if (m := HINT_CONV.match(key))]
    if not convs or len(convs) % 2:
        raise UnknownArchitectureError(
            "no ControlNet hint block (input_hint_block.N.weight) found; pass a ControlNet's weights"
        )
    return len(convs) // 2


def _rename_prefixes(sd: dict[str, Tensor], pairs: list[tuple[str, str]]) -> dict[str, Tensor]:
    """Keys renamed by the first matching (old prefix, new prefix); others are left out."""
    renamed = {}
    for key, value in sd.items():
        for old, new in pairs:
            if key.startswith(old):
                renamed[new + key[len(old) :]] = value
                break
    return renamed


def controlnet_ldm_to_diffusers(sd: dict[str, Tensor], config: ControlNetConfig) -> dict[str, Tensor]:
    """Rename a ControlNet state dict in ldm naming (`control_model.` stripped) to diffusers' names."""
    encoder = {key: value for key, value in sd.items() if not key.startswith(LDM_ONLY_KEYS)}
    renamed = unet_ldm_to_diffusers(encoder, config.unet)
    own = {key: value for key, value in sd.items() if key.startswith(LDM_ONLY_KEYS)}
    renamed |= _rename_prefixes(own, hint_pairs(len(config.hint_block_channels)))
    renamed |= _rename_prefixes(own, [("middle_block_out.0.", "controlnet_mid_block.")])
    for key, value in own.items():
        if m := ZERO_CONV.match(key):
            renamed[f"controlnet_down_blocks.{m[1]}.{m[2]}"] = value
    return renamed


def controlnet_diffusers_to_ldm(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a diffusers ControlNetModel state dict to ldm names (without `control_model.`)."""
    encoder = {key: value for key, value in sd.items() if not key.startswith(DIFFUSERS_ONLY_KEYS)}
    renamed = unet_diffusers_to_ldm(encoder)
    blocks = {int(m[1]) for key in sd if (m := re.match(rf"{HINT_PREFIX}blocks\.(\d+)\.", key))}
    pairs = [(diffusers, ldm) for ldm, diffusers in hint_pairs(len(blocks) // 2 + 1)]
    renamed |= _rename_prefixes(sd, [*pairs, ("controlnet_mid_block.", "middle_block_out.0.")])
    for key, value in sd.items():
        if m := DIFFUSERS_ZERO_CONV.match(key):
            renamed[f"zero_convs.{m[1]}.0.{m[2]}"] = value
    return renamed


def controlnet_config_from_state_dict(sd_ldm: dict[str, Tensor], **heads) -> ControlNetConfig:
    """ControlNetConfig read off an ldm ControlNet state dict; `heads` (num_heads / num_head_channels,
    norm_groups, vector_input) as `unet_config_from_state_dict` takes them, since weights lack them."""
    widths = _hint_widths_ldm(sd_ldm)
    hint = [sd_ldm[f"input_hint_block.{4 * level}.weight"] for level in range(widths)]
    unet = unet_config_from_state_dict(sd_ldm, **heads)
    return ControlNetConfig(
        replace(unet, out_channels=unet.in_channels),
        hint_channels=int(hint[0].shape[1]),
        hint_block_channels=tuple(int(weight.shape[0]) for weight in hint),
    )


def controlnet_config_to_diffusers(config: ControlNetConfig) -> dict:
    """A config.json dict for diffusers' ControlNetModel with the same architecture."""
    unet = unet_config_to_diffusers(config.unet)
    values = {key: value for key, value in unet.items() if key not in UNET_ONLY_CONFIG}
    return {
        "_class_name": "ControlNetModel",
        **values,
        "conditioning_channels": config.hint_channels,
        "conditioning_embedding_out_channels": list(config.hint_block_channels),
    }


def controlnet_config_from_diffusers(cfg: dict) -> ControlNetConfig:
    """ControlNetConfig of a diffusers ControlNetModel config.json dict."""
    if cfg.get("global_pool_conditions"):
        raise UnknownArchitectureError(
            "ControlNets with global_pool_conditions (shuffle-style) are not supported; use another one"
        )
    unet = unet_config_from_diffusers(cfg)
    widths = tuple(cfg.get("conditioning_embedding_out_channels") or (16, 32, 96, 256))
    return ControlNetConfig(
        replace(unet, out_channels=unet.in_channels),
        hint_channels=cfg.get("conditioning_channels", 3),
        hint_block_channels=widths,
    )
