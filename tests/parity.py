"""lienzo against diffusers' reference pipelines on identical tiny weights: max abs errors per component."""

from __future__ import annotations

import diffusers
import torch

import lienzo
from lienzo.models.conditioning import Conditioning
from lienzo.models.unet import sdxl_vector_conditioning
from tiny_models import SDXL_TIME_IDS, tiny_pipeline_folder

PROMPTS = ["a red circle in the top left on a blue background", "a small green square"]
PROMPT_FAMILIES = ("sd1", "sd2", "sd2-v", "sdxl", "sdxl-refiner")


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, in float32."""
    return (a.float() - b.float()).abs().max().item()


def unet_error(family: str) -> float:
    """UNet output of lienzo vs diffusers' UNet2DConditionModel (SDXL: text_time vector conditioning)."""
    folder = tiny_pipeline_folder(family)
    pipe = lienzo.load(folder, device="cpu", dtype=torch.float32)
    reference = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, pipe.spec.unet.in_channels, 16, 16, generator=generator)
    t = torch.tensor([999.0, 17.0])
    context = torch.randn(2, 77, pipe.spec.unet.context_dim, generator=generator)
    extra, y = {}, None
    if family in SDXL_TIME_IDS:
        pooled = torch.randn(2, pipe.spec.text_encoders[-1].config.projection_dim, generator=generator)
        time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0][: SDXL_TIME_IDS[family]]] * 2)
        extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
        y = sdxl_vector_conditioning(pooled, time_ids, pipe.spec.unet.addition_time_embed_dim)
    with torch.no_grad():
        return max_error(pipe.unet(x, t, Conditioning(context, y)), reference(x, t, context, **extra).sample)


def vae_errors(family: str) -> tuple[float, float]:
    """(encode mean, decode) errors of lienzo's VAE vs diffusers' AutoencoderKL."""
    folder = tiny_pipeline_folder(family)
    pipe = lienzo.load(folder, device="cpu", dtype=torch.float32)
    reference = diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval()
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected_mean = reference.encode(images).latent_dist.mean
        mean = pipe.vae.encode(images).mean
        return max_error(mean, expected_mean), max_error(pipe.vae.decode(mean), reference.decode(mean).sample)


def reference_pipeline(family: str):
    """diffusers' own pipeline class for a tiny folder."""
    folder = tiny_pipeline_folder(family)
    if family.startswith("sdxl-refiner"):
        return diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(folder)
    if family.startswith("sdxl"):
        return diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    return diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)


def sd_reference_context(reference, clip_skip: int) -> torch.Tensor:
    """SD 1.x/2.x prompt embeddings as diffusers computes them, clip skip included.

    diffusers' own clip-skip branch reads `text_encoder.text_model`, which transformers 5's CLIPTextModel
    no longer has, so for clip_skip > 1 the same formula is applied here: hidden state -clip_skip (A1111
    numbering, diffusers' clip_skip - 1) passed through the final layer norm.
    """
    if clip_skip == 1:
        return reference.encode_prompt(PROMPTS, "cpu", 1, False)[0]
    ids = reference.tokenizer(
        PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    encoder = reference.text_encoder
    hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
    return encoder.final_layer_norm(hidden)


def prompt_errors(family: str, clip_skip: int = 1) -> tuple[float, float | None]:
    """(context, pooled) errors of `pipe.encode_prompt` vs the reference pipeline; pooled None without one."""
    pipe = lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32)
    reference = reference_pipeline(family)
    cond = pipe.encode_prompt(PROMPTS, clip_skip=clip_skip)
    with torch.no_grad():
        if family.startswith("sdxl"):
            skip = None if clip_skip == 1 else clip_skip - 1
            context, _, pooled, _ = reference.encode_prompt(
                PROMPTS, device="cpu", do_classifier_free_guidance=False, clip_skip=skip
            )
            pooled_error = max_error(cond.pooled, pooled)
        else:
            context, pooled_error = sd_reference_context(reference, clip_skip), None
            assert cond.pooled is None
    if cond.context.shape != context.shape:
        raise AssertionError(f"context shape {tuple(cond.context.shape)} != reference {tuple(context.shape)}")
    return max_error(cond.context, context), pooled_error
