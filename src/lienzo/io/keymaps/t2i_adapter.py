"""T2I-Adapter key and config maps between the TencentARC layout and diffusers' T2IAdapter.

Full and SDXL adapters: `conv_in` <-> `adapter.conv_in`; the flat `body.{level * n + j}` residual blocks
(n per level) <-> `adapter.body.{level}.resnets.{j}`, the first block's `in_conv` <->
`adapter.body.{level}.in_conv`. Light adapters: `body.{level}.body.{j}` <->
`adapter.body.{level}.resnets.{j}`; `in_conv` and `out_conv` keep their names under `adapter.`.
diffusers' light config lists one width fewer than it has outputs (the last output repeats the last
width); lienzo's config lists one per output.
"""

from __future__ import annotations

import math
import re

from torch import Tensor

from lienzo.errors import UnknownArchitectureError
from lienzo.models.t2i_adapter import ADAPTER_KINDS, T2IAdapterConfig

DIFFUSERS_PREFIX = "adapter."
FULL_BLOCK = re.compile(r"body\.(\d+)\.(in_conv|block1|block2)\.(weight|bias)$")
DIFFUSERS_BLOCK = re.compile(r"adapter\.body\.(\d+)\.(?:resnets\.(\d+)\.)?(\w+)\.(weight|bias)$")
LIGHT_BLOCK = re.compile(r"body\.(\d+)\.body\.(\d+)\.")
UNSUPPORTED = {
    "style_embedding": "the style adapter (CLIP-image tokens, not a control image)",
    "down_opt.op.weight": "adapters that downsample with a strided convolution (use_conv=True)",
    ".skep.": "adapters with a skip convolution (sk=False)",
}
"""Original-layout keys of T2I-Adapter variants lienzo does not run, with what they are."""
XL_UNSHUFFLE = 16
"""The pixel-unshuffle factor that marks an original-layout file as the SDXL adapter (as ComfyUI reads it)."""


def t2i_adapter_config_from_diffusers(cfg: dict) -> T2IAdapterConfig:
    """T2IAdapterConfig of a diffusers T2IAdapter config.json dict."""
    kind = cfg.get("adapter_type", "full_adapter")
    if kind not in ADAPTER_KINDS:
        raise UnknownArchitectureError(
            f"T2I-Adapter type {kind!r} is not supported; lienzo runs {', '.join(ADAPTER_KINDS)}"
        )
    channels = tuple(int(width) for width in cfg.get("channels", (320, 640, 1280, 1280)))
    if kind == "light_adapter":
        channels = (*channels, channels[-1])
    return T2IAdapterConfig(
        kind,
        int(cfg.get("in_channels", 3)),
        channels,
        int(cfg.get("num_res_blocks", 2)),
        int(cfg.get("downscale_factor", 8)),
    )


def t2i_adapter_config_to_diffusers(config: T2IAdapterConfig) -> dict:
    """A config.json dict for diffusers' T2IAdapter with the same architecture."""
    channels = list(config.channels)
    if config.kind == "light_adapter":
        if channels[-1] != channels[-2]:
            raise ValueError(f"diffusers' light adapter repeats its last width; got {config.channels}")
        channels = channels[:-1]
    return {
        "_class_name": "T2IAdapter",
        "adapter_type": config.kind,
        "in_channels": config.in_channels,
        "channels": channels,
        "num_res_blocks": config.num_res_blocks,
        "downscale_factor": config.downscale_factor,
    }


def t2i_adapter_diffusers_to_original(sd: dict[str, Tensor], config: T2IAdapterConfig) -> dict[str, Tensor]:
    """Rename a diffusers T2IAdapter state dict to the TencentARC layout."""
    renamed = {}
    for key, value in sd.items():
        if key.startswith(f"{DIFFUSERS_PREFIX}conv_in."):
            renamed[key[len(DIFFUSERS_PREFIX) :]] = value
            continue
        match = DIFFUSERS_BLOCK.match(key)
        if match is None:
            raise UnknownArchitectureError(f"{key} is not a T2I-Adapter key; pass a diffusers T2IAdapter")
        level, block, name, kind = int(match[1]), match[2], match[3], match[4]
        if config.kind == "light_adapter":
            inner = "" if block is None else f"body.{block}."
            renamed[f"body.{level}.{inner}{name}.{kind}"] = value
        else:
            index = level * config.num_res_blocks + (0 if block is None else int(block))
            renamed[f"body.{index}.{name}.{kind}"] = value
    return renamed


def t2i_adapter_original_to_diffusers(sd: dict[str, Tensor], config: T2IAdapterConfig) -> dict[str, Tensor]:
    """Rename a TencentARC-layout T2I-Adapter state dict to diffusers' T2IAdapter names."""
    renamed = {}
    for key, value in sd.items():
        if config.kind == "light_adapter":
            renamed[DIFFUSERS_PREFIX + LIGHT_BLOCK.sub(r"body.\1.resnets.\2.", key)] = value
            continue
        match = FULL_BLOCK.match(key)
        if match is None:
            renamed[DIFFUSERS_PREFIX + key] = value
            continue
        level, block = divmod(int(match[1]), config.num_res_blocks)
        place = "" if match[2] == "in_conv" else f"resnets.{block}."
        renamed[f"{DIFFUSERS_PREFIX}body.{level}.{place}{match[2]}.{match[3]}"] = value
    return renamed


def _unshuffled_input(unshuffled: int) -> tuple[int, int]:
    """(image channels, unshuffle factor) of an input width: RGB or grey times a power-of-2 factor squared."""
    for channels in (3, 1):
        factor = math.isqrt(unshuffled // channels)
        exact = unshuffled % channels == 0 and factor * factor * channels == unshuffled
        if exact and factor & (factor - 1) == 0:
            return channels, factor
    raise UnknownArchitectureError(
        f"a T2I-Adapter input of {unshuffled} channels is not 3 or 1 image channels pixel-unshuffled by a "
        "power of 2; the file is not a T2I-Adapter lienzo can read"
    )


def t2i_adapter_config_from_state_dict(sd: dict[str, Tensor]) -> T2IAdapterConfig:
    """T2IAdapterConfig read off a TencentARC-layout state dict: light adapters have no `conv_in`; a full
    adapter that unshuffles 16x is the SDXL one; blocks per level are counted up to the first `in_conv`."""
    for marker, what in UNSUPPORTED.items():
        if any(marker in key for key in sd):
            raise UnknownArchitectureError(f"this T2I-Adapter is one of {what}, which lienzo does not run")
    if "conv_in.weight" not in sd:
        return _light_config(sd)
    channels_in, factor = _unshuffled_input(int(sd["conv_in.weight"].shape[1]))
    blocks = sorted({int(m[1]) for key in sd if (m := FULL_BLOCK.match(key))})
    if blocks != list(range(len(blocks))) or not blocks:
        raise UnknownArchitectureError("the T2I-Adapter's blocks are not numbered body.0, body.1, ...")
    if sd["body.0.block2.weight"].shape[-1] != 1:
        raise UnknownArchitectureError("T2I-Adapters whose second convolution is 3x3 (ksize=3) are not run")
    kind = "full_adapter_xl" if factor == XL_UNSHUFFLE else "full_adapter"
    widths = [int(sd[f"body.{index}.block1.weight"].shape[0]) for index in blocks]
    first_in_conv = next((index for index in blocks if f"body.{index}.in_conv.weight" in sd), None)
    if first_in_conv is None or len(blocks) % first_in_conv:
        raise UnknownArchitectureError(
            "cannot tell the T2I-Adapter's blocks per level (no width change between levels); re-export it "
            "as a diffusers folder (config.json names num_res_blocks)"
        )
    return T2IAdapterConfig(kind, channels_in, tuple(widths[::first_in_conv]), first_in_conv, factor)


def _light_config(sd: dict[str, Tensor]) -> T2IAdapterConfig:
    """A light adapter's config: one extractor per output, its inner blocks counted."""
    levels = sorted({int(key.split(".")[1]) for key in sd if key.endswith(".out_conv.weight")})
    if not levels or "body.0.in_conv.weight" not in sd:
        raise UnknownArchitectureError(
            "no T2I-Adapter found (neither conv_in nor body.0.in_conv / out_conv keys); pass a T2I-Adapter"
        )
    channels_in, factor = _unshuffled_input(int(sd["body.0.in_conv.weight"].shape[1]))
    blocks = {int(m[2]) for key in sd if (m := LIGHT_BLOCK.match(key)) and m[1] == "0"}
    widths = tuple(int(sd[f"body.{level}.out_conv.weight"].shape[0]) for level in levels)
    return T2IAdapterConfig("light_adapter", channels_in, widths, len(blocks), factor)
