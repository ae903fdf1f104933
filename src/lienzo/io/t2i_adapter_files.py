"""T2I-Adapter files (Mou et al. 2023): diffusers folders (`T2IAdapter` config.json with its adapter_type)
and single files in the TencentARC layout (`t2iadapter_*_sd14v1.pth`: `conv_in`, `body.N.block1`, ...) or
in diffusers' names, read into lienzo's (TencentARC) naming; the model's UNet is checked to fit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from lienzo.errors import InvalidArgumentError
from lienzo.io.detect import read_json
from lienzo.io.diffusers_folder import DIFFUSERS_WEIGHTS, read_component_weights
from lienzo.io.keymaps.t2i_adapter import (
    t2i_adapter_config_from_diffusers,
    t2i_adapter_config_from_state_dict,
    t2i_adapter_diffusers_to_original,
)
from lienzo.models.specs import FamilySpec
from lienzo.models.t2i_adapter import ADAPTER_KINDS, T2IAdapterConfig

ORIGINAL_MARKERS = (
    ("conv_in.weight", "body.0.block1.weight"),
    ("body.0.in_conv.weight", "body.0.out_conv.weight"),
    ("style_embedding",),
)
"""Keys that together mark a TencentARC-layout file: full and SDXL, light, style adapters."""
DIFFUSERS_MARKER = "adapter.body.0.resnets.0.block1.weight"
PUBLISHED = {
    ("full_adapter", 8, (320, 640, 1280, 1280)): "sd1",
    ("light_adapter", 8, (320, 640, 1280, 1280)): "sd1",
    ("full_adapter_xl", 16, (320, 640, 1280, 1280)): "sdxl",
}
"""The published adapters' family by (kind, unshuffle factor, widths)."""


@dataclass(frozen=True)
class T2IAdapterFile:
    """A T2I-Adapter read from disk: config, weights in lienzo's naming, the layout it was stored in
    ("t2i-adapter-folder", "t2i-adapter", "t2i-adapter-diffusers-file") and its published family (or None)."""

    config: T2IAdapterConfig
    state_dict: dict[str, Tensor]
    layout: str
    family: str | None


def is_t2i_adapter_folder(path: Path) -> bool:
    """Whether a folder is a diffusers T2IAdapter (its config.json names the class or an adapter_type)."""
    config = path / "config.json"
    if not config.is_file():
        return False
    values = read_json(config)
    return values.get("_class_name") == "T2IAdapter" or "adapter_type" in values


def is_t2i_adapter_weights(state: Mapping[str, Tensor]) -> bool:
    """Whether a single file's tensors are a T2I-Adapter's, in either naming (ControlNets have neither)."""
    return DIFFUSERS_MARKER in state or any(all(key in state for key in keys) for keys in ORIGINAL_MARKERS)


def read_t2i_adapter_folder(path: Path) -> T2IAdapterFile:
    """A diffusers T2IAdapter folder in lienzo's naming."""
    config = t2i_adapter_config_from_diffusers(read_json(path / "config.json"))
    weights = t2i_adapter_diffusers_to_original(read_component_weights(path, DIFFUSERS_WEIGHTS), config)
    return T2IAdapterFile(config, weights, "t2i-adapter-folder", adapter_family(config))


def t2i_adapter_from_weights(state: dict[str, Tensor]) -> T2IAdapterFile:
    """A single file's T2I-Adapter: TencentARC keys as they are, diffusers' keys renamed (the config is read
    off the weights either way)."""
    if DIFFUSERS_MARKER in state:
        kind = "full_adapter" if "adapter.conv_in.weight" in state else "light_adapter"
        resnets = {key.split(".")[4] for key in state if key.startswith("adapter.body.0.resnets.")}
        naming = T2IAdapterConfig(kind, num_res_blocks=len(resnets))
        state = t2i_adapter_diffusers_to_original(state, naming)
        layout = "t2i-adapter-diffusers-file"
    else:
        layout = "t2i-adapter"
    config = t2i_adapter_config_from_state_dict(state)
    return T2IAdapterFile(config, state, layout, adapter_family(config))


def adapter_family(config: T2IAdapterConfig) -> str | None:
    """The family a published adapter's shapes name, or None for other sizes."""
    return PUBLISHED.get((config.kind, config.downscale_factor, config.channels))


def expected_features(spec: FamilySpec) -> tuple[tuple[tuple[int, int], ...], tuple[int, int]]:
    """(width, how much smaller than the image) of the hidden state at each of the model's UNet levels where
    an adapter feature is added, and after its middle block."""
    unet, factor = spec.unet, spec.vae.downscale_factor
    levels = len(unet.channel_mult)
    places = []
    for level, (mult, depth) in enumerate(zip(unet.channel_mult, unet.transformer_depth, strict=True)):
        after_downsampler = depth == 0 and level != levels - 1
        places.append((mult * unet.model_channels, factor * 2 ** (level + after_downsampler)))
    middle = (unet.channel_mult[-1] * unet.model_channels, factor * 2 ** (levels - 1))
    return tuple(places), middle


def _describe(features) -> str:
    return ", ".join(f"{width} at 1/{scale}" for width, scale in features)


def check_t2i_adapter_fits(config: T2IAdapterConfig, spec: FamilySpec, name: str = "the T2I-Adapter") -> None:
    """Refuse an adapter whose features do not have the widths and sizes of the model's UNet encoder
    where they are added (naming the adapter's family and the model's)."""
    places, middle = expected_features(spec)
    features = tuple(zip(config.channels, config.feature_scales(), strict=True))
    levels, rest = features[: config.level_count], features[config.level_count :]
    if levels != places or any(feature != middle for feature in rest):
        label = ADAPTER_KINDS[config.kind]
        raise InvalidArgumentError(
            f"{name} is a T2I-Adapter for {label} ({config.kind}; features {_describe(features)} of the "
            f"image), but the model is {spec.name}, whose UNet encoder takes {_describe(places)}; use a "
            f"T2I-Adapter made for {spec.name}"
        )
