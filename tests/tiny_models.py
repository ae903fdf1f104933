"""Tiny diffusers model folders with random weights for every family, built offline for tests.

`make_tiny_pipeline_folder(family, folder)` writes one; `tiny_pipeline_folder(family)` returns a
folder cached for the whole test session (treat it as read-only). SDXL-style families also come with
another width of the embedded size/crop values (`time_embed_dim`, diffusers' addition_time_embed_dim).
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from lienzo.io.keymaps.clip import clip_config_to_transformers
from lienzo.io.keymaps.unet import unet_config_to_diffusers
from lienzo.io.keymaps.vae import vae_config_to_diffusers
from lienzo.models.clip import CLIPTextConfig
from lienzo.models.specs import VECTOR_VALUES, FamilySpec, family_spec
from lienzo.models.unet import UNetConfig
from lienzo.models.vae import VAEConfig
from lienzo.text.tokenizer import CLIPTokenizer

FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl", "sdxl-refiner", "sd1-inpaint", "sd2-depth")
SDXL_TIME_EMBED_CHANNELS = 256
SDXL_TIME_IDS = VECTOR_VALUES
"""Size/crop/score values of each SDXL-style family (its vector-conditioning kind has the same name)."""
TINY_CLIP = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4)
TINY_PROJECTED_CLIP_WIDTH = 48
TINY_UNET = UNetConfig(
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=2,
    transformer_depth=(1, 0),
    transformer_depth_middle=1,
    num_heads=8,
    context_dim=32,
)
TINY_VAE = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)
SEED = 0


def tiny_spec(family: str, time_embed_dim: int = SDXL_TIME_EMBED_CHANNELS) -> FamilySpec:
    """The family's spec with tiny component configs that keep its distinguishing traits."""
    reference = family_spec(family)
    towers = tuple(replace(tower, config=_tiny_clip(tower.config)) for tower in reference.text_encoders)
    context_dim = sum(tower.config.hidden_size for tower in towers)
    unet = replace(TINY_UNET, in_channels=reference.unet.in_channels, context_dim=context_dim)
    if reference.unet.num_head_channels > 0:
        unet = replace(unet, num_head_channels=16, use_linear_in_transformer=True)
    if reference.vector_conditioning is not None:
        pooled = towers[-1].config.projection_dim
        values = VECTOR_VALUES[reference.vector_conditioning]
        unet = replace(
            unet,
            transformer_depth=(0, 2),
            transformer_depth_middle=2,
            adm_in_channels=pooled + values * time_embed_dim,
            addition_time_embed_dim=time_embed_dim,
        )
    vae = replace(TINY_VAE, scaling_factor=reference.vae.scaling_factor)
    return replace(reference, unet=unet, vae=vae, text_encoders=towers)


def _tiny_clip(reference: CLIPTextConfig) -> CLIPTextConfig:
    """A tiny tower with the reference's activation; projected (bigG-like) towers are wider than CLIP-L."""
    if reference.projection_dim is None:
        return replace(TINY_CLIP, hidden_act=reference.hidden_act)
    width = TINY_PROJECTED_CLIP_WIDTH
    return replace(
        TINY_CLIP,
        hidden_size=width,
        intermediate_size=2 * width,
        hidden_act=reference.hidden_act,
        projection_dim=width,
    )


def make_tiny_pipeline_folder(
    family: str, folder: Path, time_embed_dim: int = SDXL_TIME_EMBED_CHANNELS
) -> Path:
    """Build a tiny diffusers pipeline of `family` with seeded random weights and save it to `folder`."""
    import diffusers
    import transformers

    spec = tiny_spec(family, time_embed_dim)
    torch.manual_seed(SEED)
    sample_size = spec.resolution // spec.vae.downscale_factor
    unet = diffusers.UNet2DConditionModel(**unet_config_to_diffusers(spec.unet), sample_size=sample_size)
    vae = diffusers.AutoencoderKL(**vae_config_to_diffusers(spec.vae))
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction" if spec.prediction == "v" else "epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )
    encoders, tokenizers = [], []
    staging = Path(tempfile.mkdtemp())
    for index, tower in enumerate(spec.text_encoders):
        config = clip_config_to_transformers(tower.config)
        model_class = getattr(transformers, config["architectures"][0])
        encoders.append(model_class(transformers.CLIPTextConfig(**config)).eval())
        CLIPTokenizer.from_bundled(pad_token=tower.pad_token).save(staging / str(index))
        tokenizers.append(transformers.CLIPTokenizer.from_pretrained(staging / str(index)))
    components = {"unet": unet, "vae": vae, "scheduler": scheduler}
    if spec.vector_conditioning is None:
        components.update(text_encoder=encoders[0], tokenizer=tokenizers[0])
    elif len(encoders) == 2:
        components.update(text_encoder=encoders[0], tokenizer=tokenizers[0])
        components.update(text_encoder_2=encoders[1], tokenizer_2=tokenizers[1])
    else:
        components.update(text_encoder=None, tokenizer=None)
        components.update(text_encoder_2=encoders[0], tokenizer_2=tokenizers[0])
    if family.endswith("-depth"):
        _save_components_by_hand("StableDiffusionDepth2ImgPipeline", components, folder)
    else:
        _pipeline_class(family, spec)(**components, **_pipeline_extras(spec)).save_pretrained(folder)
    tokenizer_names = [name for name, value in components.items() if name.startswith("tokenizer") and value]
    for index, name in enumerate(tokenizer_names):
        shutil.rmtree(folder / name)
        shutil.copytree(staging / str(index), folder / name)
    shutil.rmtree(staging)
    return folder


def _pipeline_class(family: str, spec: FamilySpec):
    import diffusers

    if spec.vector_conditioning == "sdxl":
        return diffusers.StableDiffusionXLPipeline
    if spec.vector_conditioning == "sdxl-refiner":
        return diffusers.StableDiffusionXLImg2ImgPipeline
    if family.endswith("-inpaint"):
        return diffusers.StableDiffusionInpaintPipeline
    return diffusers.StableDiffusionPipeline


def _pipeline_extras(spec: FamilySpec) -> dict:
    if spec.vector_conditioning == "sdxl-refiner":
        return {"requires_aesthetics_score": True}
    if spec.vector_conditioning is None:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    return {}


def _save_components_by_hand(class_name: str, components: dict, folder: Path) -> Path:
    """Write a pipeline folder whose pipeline needs parts too heavy for tests (a depth estimator)."""
    import diffusers

    folder.mkdir(parents=True, exist_ok=True)
    index = {
        "_class_name": class_name,
        "_diffusers_version": diffusers.__version__,
        "depth_estimator": [None, None],
        "feature_extractor": [None, None],
    }
    for name, component in components.items():
        component.save_pretrained(folder / name)
        library = "transformers" if type(component).__module__.startswith("transformers") else "diffusers"
        index[name] = [library, type(component).__name__]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder


@functools.cache
def session_folder(prefix: str) -> Path:
    """A temporary folder for files built once per test session, removed when the session ends."""
    folder = Path(tempfile.mkdtemp(prefix=f"lienzo-{prefix}-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


@functools.cache
def tiny_pipeline_folder(family: str, time_embed_dim: int = SDXL_TIME_EMBED_CHANNELS) -> Path:
    """A tiny pipeline folder of `family`, built once per test session; do not modify it."""
    name = family if time_embed_dim == SDXL_TIME_EMBED_CHANNELS else f"{family}-time{time_embed_dim}"
    return make_tiny_pipeline_folder(family, session_folder("tiny") / name, time_embed_dim)


def randomize_parameters(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter random values so no zero or unit init can hide a wiring error."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim > 1:
                param.copy_(noise / math.sqrt(param[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise)
