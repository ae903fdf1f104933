"""Where each family's weights live in single files and diffusers folders, as data."""

from __future__ import annotations

from dataclasses import dataclass

from lienzo.models.specs import parse_family

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
V_PREDICTION_KEY = "v_pred"


@dataclass(frozen=True)
class TextEncoderLayout:
    """One text tower: its single-file prefix and key style, and its diffusers component names.

    `style` is "hf" (transformers keys) or "openclip". `unused_final_layers` counts the layers an
    original single file carries beyond the ones the model runs (SD 2 stores 24 OpenCLIP layers, runs 23).
    """

    prefix: str
    style: str
    component: str
    tokenizer_component: str
    unused_final_layers: int = 0


@dataclass(frozen=True)
class FamilyLayout:
    """The storage layout of a base family (variants such as -inpaint share their base's layout).

    `pipeline_classes` names the diffusers pipeline of each variant (None: the base family).
    """

    text_encoders: tuple[TextEncoderLayout, ...]
    pipeline_classes: dict[str | None, str]
    unused_components: tuple[str, ...]
    pipeline_options: dict[str, bool]


CLIP_L_SD1 = TextEncoderLayout("cond_stage_model.transformer.", "hf", "text_encoder", "tokenizer")
OPENCLIP_SD2 = TextEncoderLayout(
    "cond_stage_model.model.", "openclip", "text_encoder", "tokenizer", unused_final_layers=1
)
CLIP_L_SDXL = TextEncoderLayout("conditioner.embedders.0.transformer.", "hf", "text_encoder", "tokenizer")
BIGG_SDXL = TextEncoderLayout("conditioner.embedders.1.model.", "openclip", "text_encoder_2", "tokenizer_2")
BIGG_REFINER = TextEncoderLayout(
    "conditioner.embedders.0.model.", "openclip", "text_encoder_2", "tokenizer_2"
)

SD_PIPELINES = {
    None: "StableDiffusionPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "depth": "StableDiffusionDepth2ImgPipeline",
}
SD_LAYOUT_OPTIONS = {"requires_safety_checker": False}
SD_UNUSED = ("safety_checker", "feature_extractor")
SD2_LAYOUT = FamilyLayout((OPENCLIP_SD2,), SD_PIPELINES, SD_UNUSED, SD_LAYOUT_OPTIONS)

LAYOUTS = {
    "sd1": FamilyLayout((CLIP_L_SD1,), SD_PIPELINES, SD_UNUSED, SD_LAYOUT_OPTIONS),
    "sd2": SD2_LAYOUT,
    "sd2-v": SD2_LAYOUT,
    "sdxl": FamilyLayout(
        (CLIP_L_SDXL, BIGG_SDXL),
        {None: "StableDiffusionXLPipeline", "inpaint": "StableDiffusionXLInpaintPipeline"},
        ("image_encoder", "feature_extractor"),
        {"force_zeros_for_empty_prompt": True},
    ),
    "sdxl-refiner": FamilyLayout(
        (BIGG_REFINER,),
        {None: "StableDiffusionXLImg2ImgPipeline", "inpaint": "StableDiffusionXLInpaintPipeline"},
        ("text_encoder", "tokenizer", "image_encoder", "feature_extractor"),
        {"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False},
    ),
}
"""The layout of each base family (specs.BASE_FAMILIES); sd2-v stores like sd2."""


def family_layout(name: str) -> FamilyLayout:
    """The storage layout of a family name."""
    return LAYOUTS[parse_family(name).base]
