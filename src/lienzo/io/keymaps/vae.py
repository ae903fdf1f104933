"""AutoencoderKL key and config maps between the ldm checkpoint layout (lienzo's own) and diffusers."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from lienzo.errors import InvalidArgumentError, UnknownArchitectureError
from lienzo.models.vae import VAEConfig

RESNET_LDM_TO_DIFFUSERS = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}
ATTENTION_LDM_TO_DIFFUSERS = {
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
}
LEGACY_ATTENTION_TO_LDM = {"query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
RESNET_DIFFUSERS_TO_LDM = {new: old for old, new in RESNET_LDM_TO_DIFFUSERS.items()}
ATTENTION_DIFFUSERS_TO_LDM = {
    new: old for old, new in ATTENTION_LDM_TO_DIFFUSERS.items()
} | LEGACY_ATTENTION_TO_LDM
ATTENTION_PROJECTIONS = ("q", "k", "v", "proj_out")

DIFFUSERS_DOWN_BLOCK = "DownEncoderBlock2D"
DIFFUSERS_UP_BLOCK = "UpDecoderBlock2D"

_PARAM = r"(weight|bias)"
_LDM_PATTERNS = {
    "plain": re.compile(rf"((?:encoder|decoder)\.conv_(?:in|out)|quant_conv|post_quant_conv)\.{_PARAM}"),
    "norm_out": re.compile(rf"(encoder|decoder)\.norm_out\.{_PARAM}"),
    "mid_resnet": re.compile(rf"(encoder|decoder)\.mid\.block_([12])\.(\w+)\.{_PARAM}"),
    "mid_attention": re.compile(rf"(encoder|decoder)\.mid\.attn_1\.(\w+)\.{_PARAM}"),
    "down_resnet": re.compile(rf"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.{_PARAM}"),
    "downsample": re.compile(rf"encoder\.down\.(\d+)\.downsample\.conv\.{_PARAM}"),
    "up_resnet": re.compile(rf"decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.{_PARAM}"),
    "upsample": re.compile(rf"decoder\.up\.(\d+)\.upsample\.conv\.{_PARAM}"),
}
_DIFFUSERS_PATTERNS = {
    "plain": re.compile(rf"((?:encoder|decoder)\.conv_(?:in|out)|quant_conv|post_quant_conv)\.{_PARAM}"),
    "norm_out": re.compile(rf"(encoder|decoder)\.conv_norm_out\.{_PARAM}"),
    "mid_resnet": re.compile(rf"(encoder|decoder)\.mid_block\.resnets\.([01])\.(\w+)\.{_PARAM}"),
    "mid_attention": re.compile(rf"(encoder|decoder)\.mid_block\.attentions\.0\.(\w+|to_out\.0)\.{_PARAM}"),
    "down_resnet": re.compile(rf"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.{_PARAM}"),
    "downsample": re.compile(rf"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.{_PARAM}"),
    "up_resnet": re.compile(rf"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.{_PARAM}"),
    "upsample": re.compile(rf"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.{_PARAM}"),
}


def _unknown_key(key: str, layout: str) -> UnknownArchitectureError:
    return UnknownArchitectureError(
        f"{key!r} is not a key of a {layout} AutoencoderKL; pass only the VAE's tensors, with any "
        "'first_stage_model.' or 'vae.' prefix removed"
    )


def _leaf(name: str, table: Mapping[str, str], key: str, layout: str) -> str:
    if name not in table:
        raise _unknown_key(key, layout)
    return table[name]


def _ldm_key_to_diffusers(key: str, levels: int) -> str:
    """Diffusers name of one ldm VAE key; the decoder's level order is reversed."""
    patterns = _LDM_PATTERNS
    if patterns["plain"].fullmatch(key):
        return key
    if match := patterns["norm_out"].fullmatch(key):
        return f"{match[1]}.conv_norm_out.{match[2]}"
    if match := patterns["mid_resnet"].fullmatch(key):
        leaf = _leaf(match[3], RESNET_LDM_TO_DIFFUSERS, key, "ldm")
        return f"{match[1]}.mid_block.resnets.{int(match[2]) - 1}.{leaf}.{match[4]}"
    if match := patterns["mid_attention"].fullmatch(key):
        leaf = _leaf(match[2], ATTENTION_LDM_TO_DIFFUSERS, key, "ldm")
        return f"{match[1]}.mid_block.attentions.0.{leaf}.{match[3]}"
    if match := patterns["down_resnet"].fullmatch(key):
        leaf = _leaf(match[3], RESNET_LDM_TO_DIFFUSERS, key, "ldm")
        return f"encoder.down_blocks.{match[1]}.resnets.{match[2]}.{leaf}.{match[4]}"
    if match := patterns["downsample"].fullmatch(key):
        return f"encoder.down_blocks.{match[1]}.downsamplers.0.conv.{match[2]}"
    if match := patterns["up_resnet"].fullmatch(key):
        leaf = _leaf(match[3], RESNET_LDM_TO_DIFFUSERS, key, "ldm")
        return f"decoder.up_blocks.{levels - 1 - int(match[1])}.resnets.{match[2]}.{leaf}.{match[4]}"
    if match := patterns["upsample"].fullmatch(key):
        return f"decoder.up_blocks.{levels - 1 - int(match[1])}.upsamplers.0.conv.{match[2]}"
    raise _unknown_key(key, "ldm")


def _diffusers_key_to_ldm(key: str, levels: int) -> str:
    """ldm name of one diffusers VAE key (current or legacy attention names)."""
    patterns = _DIFFUSERS_PATTERNS
    if patterns["plain"].fullmatch(key):
        return key
    if match := patterns["norm_out"].fullmatch(key):
        return f"{match[1]}.norm_out.{match[2]}"
    if match := patterns["mid_resnet"].fullmatch(key):
        leaf = _leaf(match[3], RESNET_DIFFUSERS_TO_LDM, key, "diffusers")
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{leaf}.{match[4]}"
    if match := patterns["mid_attention"].fullmatch(key):
        leaf = _leaf(match[2], ATTENTION_DIFFUSERS_TO_LDM, key, "diffusers")
        return f"{match[1]}.mid.attn_1.{leaf}.{match[3]}"
    if match := patterns["down_resnet"].fullmatch(key):
        leaf = _leaf(match[3], RESNET_DIFFUSERS_TO_LDM, key, "diffusers")
        return f"encoder.down.{match[1]}.block.{match[2]}.{leaf}.{match[4]}"
    if match := patterns["downsample"].fullmatch(key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    if match := patterns["up_resnet"].fullmatch(key):
        leaf = _leaf(match[3], RESNET_DIFFUSERS_TO_LDM, key, "diffusers")
        return f"decoder.up.{levels - 1 - int(match[1])}.block.{match[2]}.{leaf}.{match[4]}"
    if match := patterns["upsample"].fullmatch(key):
        return f"decoder.up.{levels - 1 - int(match[1])}.upsample.conv.{match[2]}"
    raise _unknown_key(key, "diffusers")


def _is_attention_projection_weight(ldm_key: str) -> bool:
    parts = ldm_key.split(".")
    return parts[1:3] == ["mid", "attn_1"] and parts[3] in ATTENTION_PROJECTIONS and parts[4] == "weight"


def _diffusers_levels(sd: Mapping[str, torch.Tensor]) -> int:
    """Number of resolution levels, counted from the decoder's up_blocks (else the encoder's down_blocks)."""
    for pattern in (r"decoder\.up_blocks\.(\d+)\.", r"encoder\.down_blocks\.(\d+)\."):
        indices = [int(match[1]) for key in sd if (match := re.match(pattern, key))]
        if indices:
            return max(indices) + 1
    raise UnknownArchitectureError(
        "the state dict has no 'decoder.up_blocks' or 'encoder.down_blocks' keys; pass a diffusers "
        "AutoencoderKL state dict"
    )


def vae_diffusers_to_ldm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict renamed to ldm keys (the layout of lienzo's AutoencoderKL)."""
    levels = _diffusers_levels(sd)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        ldm_key = _diffusers_key_to_ldm(key, levels)
        if _is_attention_projection_weight(ldm_key) and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        converted[ldm_key] = tensor
    return converted


def vae_ldm_to_diffusers(sd: Mapping[str, torch.Tensor], config: VAEConfig) -> dict[str, torch.Tensor]:
    """An ldm AutoencoderKL state dict renamed to diffusers keys, attention 1x1 convs as Linear weights."""
    levels = len(config.ch_mult)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if _is_attention_projection_weight(key) and tensor.ndim == 4:
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
        converted[_ldm_key_to_diffusers(key, levels)] = tensor
    return converted


def vae_config_to_diffusers(config: VAEConfig) -> dict:
    """A diffusers `AutoencoderKL` config.json dict describing the same network."""
    if config.ch_mult[0] != 1 or config.embed_dim != config.z_channels:
        raise InvalidArgumentError(
            "diffusers' AutoencoderKL needs ch_mult[0] == 1 and embed_dim == z_channels; "
            f"got ch_mult={config.ch_mult}, embed_dim={config.embed_dim}, z_channels={config.z_channels}"
        )
    levels = len(config.ch_mult)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "down_block_types": [DIFFUSERS_DOWN_BLOCK] * levels,
        "up_block_types": [DIFFUSERS_UP_BLOCK] * levels,
        "block_out_channels": [config.ch * mult for mult in config.ch_mult],
        "layers_per_block": config.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": config.z_channels,
        "norm_num_groups": config.norm_groups,
        "scaling_factor": config.scaling_factor,
    }


def vae_config_from_diffusers(config: Mapping) -> VAEConfig:
    """The VAEConfig of a diffusers `AutoencoderKL` config dict; missing entries take diffusers' defaults."""
    widths = list(config.get("block_out_channels", (64,)))
    levels = len(widths)
    supported = (
        list(config.get("down_block_types", [DIFFUSERS_DOWN_BLOCK])) == [DIFFUSERS_DOWN_BLOCK] * levels
        and list(config.get("up_block_types", [DIFFUSERS_UP_BLOCK])) == [DIFFUSERS_UP_BLOCK] * levels
        and config.get("act_fn", "silu") == "silu"
        and config.get("use_quant_conv", True)
        and config.get("use_post_quant_conv", True)
        and config.get("mid_block_add_attention", True)
        and all(width % widths[0] == 0 for width in widths)
    )
    if not supported:
        raise UnknownArchitectureError(
            "this diffusers AutoencoderKL config is not the latent-diffusion VAE (it needs "
            f"{DIFFUSERS_DOWN_BLOCK}/{DIFFUSERS_UP_BLOCK} blocks, silu, quant convs, mid attention and "
            "block_out_channels that are multiples of the first); use a Stable Diffusion VAE"
        )
    latent_channels = int(config.get("latent_channels", 4))
    return VAEConfig(
        in_channels=int(config.get("in_channels", 3)),
        out_channels=int(config.get("out_channels", 3)),
        ch=widths[0],
        ch_mult=tuple(width // widths[0] for width in widths),
        num_res_blocks=int(config.get("layers_per_block", 1)),
        z_channels=latent_channels,
        embed_dim=latent_channels,
        norm_groups=int(config.get("norm_num_groups", 32)),
        scaling_factor=float(config.get("scaling_factor", 0.18215)),
    )


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> torch.Size:
    if key not in sd:
        raise UnknownArchitectureError(
            f"the state dict has no {key!r}; pass an ldm AutoencoderKL state dict with its "
            "'first_stage_model.' prefix removed (convert diffusers ones with vae_diffusers_to_ldm)"
        )
    return sd[key].shape


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    return len({match[1] for key in sd if (match := re.match(pattern, key))})


def vae_config_from_state_dict(
    sd: Mapping[str, torch.Tensor], scaling_factor: float = 0.18215, norm_groups: int = 32
) -> VAEConfig:
    """The VAEConfig inferred from an ldm AutoencoderKL state dict's shapes; norm groups are not stored."""
    ch, in_channels = _shape(sd, "encoder.conv_in.weight")[:2]
    levels = _count(sd, r"encoder\.down\.(\d+)\.block\.0\.conv1\.weight")
    widths = [_shape(sd, f"encoder.down.{level}.block.0.conv1.weight")[0] for level in range(levels)]
    if levels == 0 or any(width % ch for width in widths):
        raise UnknownArchitectureError(
            "the encoder's level widths are not multiples of conv_in's width; "
            "this is not an ldm AutoencoderKL"
        )
    return VAEConfig(
        in_channels=in_channels,
        out_channels=_shape(sd, "decoder.conv_out.weight")[0],
        ch=ch,
        ch_mult=tuple(width // ch for width in widths),
        num_res_blocks=_count(sd, r"encoder\.down\.0\.block\.(\d+)\.conv1\.weight"),
        z_channels=_shape(sd, "encoder.conv_out.weight")[0] // 2,
        embed_dim=_shape(sd, "quant_conv.weight")[0] // 2,
        norm_groups=norm_groups,
        scaling_factor=scaling_factor,
    )
