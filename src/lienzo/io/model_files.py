"""A model's weights in lienzo's naming with its family and actual configs, independent of the file layout."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from lienzo.errors import CorruptCheckpointError
from lienzo.io.layouts import family_layout
from lienzo.models.clip import CLIPTextConfig
from lienzo.models.specs import VECTOR_VALUES, FamilySpec, family_spec
from lienzo.models.unet import UNetConfig
from lienzo.models.vae import VAEConfig

ConfigT = TypeVar("ConfigT")


@dataclass
class ModelFiles:
    """State dicts in lienzo's module naming, the family, and its spec with the model's actual configs.

    `text_encoders` and `tokenizer_folders` follow the order of `spec.text_encoders`; a tokenizer
    folder is None when the source carried none (the bundled tokenizer applies).
    """

    spec: FamilySpec
    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]
    text_encoders: list[dict[str, torch.Tensor]]
    tokenizer_folders: list[Path | None]
    source_format: str

    @property
    def family(self) -> str:
        """The family's name (the spec's), e.g. "sd1", "sd2-v", "sdxl-refiner", "sd1-inpaint"."""
        return self.spec.name

    def components(self) -> dict[str, dict[str, torch.Tensor]]:
        """Each state dict by its diffusers component name (`unet`, `vae`, `text_encoder`, ...)."""
        named = {"unet": self.unet, "vae": self.vae}
        towers = family_layout(self.family).text_encoders
        pairs = zip(towers, self.text_encoders, strict=True)
        named.update({tower.component: weights for tower, weights in pairs})
        return named


def spec_with_configs(
    family: str, unet: UNetConfig, vae: VAEConfig, text_encoders: list[CLIPTextConfig]
) -> FamilySpec:
    """The family's spec with the model's actual component configs in place of the reference ones."""
    spec = family_spec(family)
    if len(text_encoders) != len(spec.text_encoders):
        raise CorruptCheckpointError(
            f"a {family} model has {len(spec.text_encoders)} text encoder(s) but {len(text_encoders)} were "
            "found; check the family or re-export the model"
        )
    pairs = zip(spec.text_encoders, text_encoders, strict=True)
    towers = tuple(replace(tower, config=config) for tower, config in pairs)
    return replace(spec, unet=unet, vae=vae, text_encoders=towers)


def check_vector_conditioning(spec: FamilySpec, source: str) -> None:
    """Refuse a UNet whose vector input is not the pooled text width plus the embedded size/crop values."""
    if spec.vector_conditioning is None or spec.pooled_width is None:
        return
    values, dim, pooled = (
        VECTOR_VALUES[spec.vector_conditioning],
        spec.unet.addition_time_embed_dim,
        spec.pooled_width,
    )
    expected = pooled + values * dim
    if spec.unet.adm_in_channels != expected:
        raise CorruptCheckpointError(
            f"{source}: the UNet's vector input is {spec.unet.adm_in_channels} wide, but a {pooled}-wide "
            f"pooled text embedding plus {values} values of addition_time_embed_dim {dim} make {expected}; "
            "correct addition_time_embed_dim in the UNet config or re-export the model"
        )


def cast_state_dict(
    state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """The state dict with floating-point tensors cast to `dtype` (unchanged when dtype is None)."""
    if dtype is None:
        return dict(state_dict)
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in state_dict.items()}


def config_to_json(config: Any) -> str:
    """A config dataclass as a JSON object string."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_json(config_class: type[ConfigT], text: str) -> ConfigT:
    """A config dataclass from `config_to_json` output; lists become tuples, unknown keys are ignored."""
    values = json.loads(text)
    known = {field.name for field in dataclasses.fields(config_class)}
    arguments = {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in values.items()
        if name in known
    }
    return config_class(**arguments)


def parameter_count(state_dict: dict[str, torch.Tensor]) -> int:
    """Number of scalar parameters in a state dict."""
    return sum(tensor.numel() for tensor in state_dict.values())


def dtype_names(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The distinct dtypes of a state dict's tensors, most common first."""
    counts: dict[str, int] = {}
    for tensor in state_dict.values():
        name = str(tensor.dtype).removeprefix("torch.")
        counts[name] = counts.get(name, 0) + tensor.numel()
    return sorted(counts, key=counts.get, reverse=True)
