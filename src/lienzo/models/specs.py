"""The Stable Diffusion model families as data: one `FamilySpec` per family, variants by suffix."""

from __future__ import annotations

from dataclasses import dataclass, replace

from lienzo.errors import InvalidArgumentError
from lienzo.models.clip import CLIPTextConfig
from lienzo.models.unet import UNetConfig
from lienzo.models.vae import VAEConfig


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


BETA_SCHEDULES = ("scaled_linear", "linear", "cosine")


@dataclass(frozen=True)
class NoiseScheduleConfig:
    """A discrete noise schedule: beta schedule name (one of BETA_SCHEDULES), number of training timesteps
    and beta endpoints; `zero_terminal_snr` rescales it so the last step is pure noise (Lin et al. 2024)."""

    beta_schedule: str = "scaled_linear"
    timesteps: int = 1000
    linear_start: float = 0.00085
    linear_end: float = 0.012
    zero_terminal_snr: bool = False

    def summary(self) -> str:
        """One line for people, e.g. "scaled_linear betas 0.00085 to 0.012, 1000 timesteps"."""
        text = (
            f"{self.beta_schedule} betas {self.linear_start} to {self.linear_end}, {self.timesteps} timesteps"
        )
        return text + (", zero terminal SNR" if self.zero_terminal_snr else "")


@dataclass(frozen=True)
class FamilySpec:
    """Everything that distinguishes one model family from another: the networks' configs, what the UNet
    predicts ("eps", "v") and the noise schedule it was trained on, which sampling and training share."""

    name: str
    unet: UNetConfig
    vae: VAEConfig
    text_encoders: tuple[TextEncoderSpec, ...]
    prediction: str = "eps"
    schedule: NoiseScheduleConfig = NoiseScheduleConfig()
    resolution: int = 512
    vector_conditioning: str | None = None
    variant: str | None = None
    """"inpaint" or "depth" for the variants whose UNet takes extra input channels, else None."""

    @property
    def concat_channels(self) -> int:
        """Extra UNet input channels beyond the latent (inpaint: mask + masked image; depth: the map)."""
        return self.unet.in_channels - self.vae.embed_dim

    @property
    def pooled_width(self) -> int | None:
        """Width of the pooled text embedding that opens the vector conditioning, or None without one."""
        for tower in self.text_encoders:
            if tower.pooled:
                return tower.config.projection_dim or tower.config.hidden_size
        return None


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
VARIANTS = ("inpaint", "depth")
VECTOR_VALUES = {"sdxl": 6, "sdxl-refiner": 5}
"""How many size/crop/score values each vector conditioning embeds after the pooled text embedding."""
KNOWN_FAMILIES = f"{', '.join(BASE_FAMILIES)}, optionally with an -{' or -'.join(VARIANTS)} suffix"


@dataclass(frozen=True)
class FamilyName:
    """A family name split into its base family (a BASE_FAMILIES key such as `sd2-v`) and variant."""

    base: str
    variant: str | None = None

    @property
    def name(self) -> str:
        """The full family name, such as `sd2-v-inpaint`."""
        return self.base if self.variant is None else f"{self.base}-{self.variant}"


def parse_family(name: str) -> FamilyName:
    """Split a family name such as `sd2-v-depth` into base family and variant; unknown names are refused."""
    base, variant = name, None
    for suffix in VARIANTS:
        if name.endswith(f"-{suffix}"):
            base, variant = name[: -len(suffix) - 1], suffix
    if base not in BASE_FAMILIES:
        raise InvalidArgumentError(f"unknown model family {name!r}; use one of {KNOWN_FAMILIES}")
    return FamilyName(base, variant)


def family_spec(name: str) -> FamilySpec:
    """The spec of a family name such as `sd1`, `sd2-v` or `sd1-inpaint`."""
    family = parse_family(name)
    spec = BASE_FAMILIES[family.base]
    if family.variant is None:
        return spec
    unet = replace(spec.unet, in_channels=variant_in_channels(family.variant, spec.vae.embed_dim))
    return replace(spec, name=name, unet=unet, variant=family.variant)


def variant_in_channels(variant: str | None, latent_channels: int) -> int:
    """UNet input channels: the latent, plus the mask and masked-image latent (inpaint) or the depth map."""
    extra = {None: 0, "inpaint": latent_channels + 1, "depth": 1}
    return latent_channels + extra[variant]
