"""The Stable Diffusion model families as data: one `FamilySpec` per family, variants by suffix."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InvalidArgumentError
from .clip import CLIPTextConfig
from .unet import UNetConfig
from .vae import VAEConfig


@dataclass(frozen=True)
class TextEncoderSpec:
    """One CLIP text tower and how a pipeline reads its output.

    `hidden_layer` indexes transformers-style hidden states (-1 = last layer); clip skip n reads
    `hidden_layer - (n - 1)`. `final_norm` applies the final layer norm to that layer's output.
    """

    config: CLIPTextConfig
    hidden_layer: int = -1
    final_norm: bool = True
    pad_token: str = "<|endoftext|>"
    pooled: bool = False


@dataclass(frozen=True)
class FamilySpec:
    """Everything that distinguishes one model family from another."""

    name: str
    unet: UNetConfig
    vae: VAEConfig
    text_encoders: tuple[TextEncoderSpec, ...]
    prediction: str = "eps"
    resolution: int = 512
    vector_conditioning: str | None = None


CLIP_L = CLIPTextConfig()
OPENCLIP_H = CLIPTextConfig(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16, hidden_act="gelu"
)
OPENCLIP_BIGG = CLIPTextConfig(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    hidden_act="gelu",
    projection_dim=1280,
)

SD_VAE = VAEConfig()
SDXL_VAE = VAEConfig(scaling_factor=0.13025)

SD1 = FamilySpec(
    name="sd1",
    unet=UNetConfig(),
    vae=SD_VAE,
    text_encoders=(TextEncoderSpec(CLIP_L),),
)
SD2 = FamilySpec(
    name="sd2",
    unet=UNetConfig(num_head_channels=64, context_dim=1024, use_linear_in_transformer=True),
    vae=SD_VAE,
    text_encoders=(TextEncoderSpec(OPENCLIP_H, pad_token="!"),),
)
SD2_V = replace(SD2, name="sd2-v", prediction="v", resolution=768)
SDXL = FamilySpec(
    name="sdxl",
    unet=UNetConfig(
        channel_mult=(1, 2, 4),
        transformer_depth=(0, 2, 10),
        transformer_depth_middle=10,
        num_head_channels=64,
        context_dim=2048,
        use_linear_in_transformer=True,
        adm_in_channels=2816,
    ),
    vae=SDXL_VAE,
    text_encoders=(
        TextEncoderSpec(CLIP_L, hidden_layer=-2, final_norm=False),
        TextEncoderSpec(OPENCLIP_BIGG, hidden_layer=-2, final_norm=False, pad_token="!", pooled=True),
    ),
    resolution=1024,
    vector_conditioning="sdxl",
)
SDXL_REFINER = FamilySpec(
    name="sdxl-refiner",
    unet=UNetConfig(
        model_channels=384,
        transformer_depth=(0, 4, 4, 0),
        transformer_depth_middle=4,
        num_head_channels=64,
        context_dim=1280,
        use_linear_in_transformer=True,
        adm_in_channels=2560,
    ),
    vae=SDXL_VAE,
    text_encoders=(
        TextEncoderSpec(OPENCLIP_BIGG, hidden_layer=-2, final_norm=False, pad_token="!", pooled=True),
    ),
    resolution=1024,
    vector_conditioning="sdxl-refiner",
)

BASE_FAMILIES = {spec.name: spec for spec in (SD1, SD2, SD2_V, SDXL, SDXL_REFINER)}
VARIANT_IN_CHANNELS = {"inpaint": 9, "depth": 5}


def family_spec(name: str) -> FamilySpec:
    """The spec of a family name such as `sd1`, `sd2-v` or `sd1-inpaint`."""
    base, variant = name, None
    for suffix in VARIANT_IN_CHANNELS:
        if name.endswith(f"-{suffix}"):
            base, variant = name[: -len(suffix) - 1], suffix
    if base not in BASE_FAMILIES:
        known = ", ".join(sorted(BASE_FAMILIES))
        raise InvalidArgumentError(
            f"unknown model family {name!r}; use one of {known}, optionally with an -inpaint or -depth suffix"
        )
    spec = BASE_FAMILIES[base]
    if variant is None:
        return spec
    unet = replace(spec.unet, in_channels=VARIANT_IN_CHANNELS[variant])
    return replace(spec, name=name, unet=unet)
