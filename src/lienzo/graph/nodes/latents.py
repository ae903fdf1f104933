"""Latent nodes: EmptyLatentImage, LatentUpscale, LatentUpscaleBy, SetLatentNoiseMask.

LATENT is {"samples": (B, C, h, w) scaled latents, "noise_mask": optional (B, 1, H, W) mask}."""

from __future__ import annotations

import torch

from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.values import mask_batch
from lienzo.pipelines.tensor_images import resample, target_size

MAX_RESOLUTION = 16384
LATENT_CHANNELS = 4
LATENT_FACTOR = 8
LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic")
CROP = ("disabled", "center")


def empty_latent_image(context, width: int, height: int, batch_size: int):
    """A batch of zero latents for width x height images (4 channels as in ComfyUI; a sampler or VAE of
    wider latents takes them as its own width of zeros, graph.values.latent_for)."""
    shape = (batch_size, LATENT_CHANNELS, height // LATENT_FACTOR, width // LATENT_FACTOR)
    return ({"samples": torch.zeros(shape)},)


def latent_upscale(context, samples: dict, upscale_method: str, width: int, height: int, crop: str):
    """Resize latents to those of a width x height image (0 keeps the aspect ratio)."""
    latent = samples["samples"]
    width, height = target_size(latent, width // LATENT_FACTOR, height // LATENT_FACTOR)
    return ({**samples, "samples": resample(latent, width, height, upscale_method, crop)},)


def latent_upscale_by(context, samples: dict, upscale_method: str, scale_by: float):
    """Resize latents by a factor."""
    latent = samples["samples"]
    width, height = round(latent.shape[-1] * scale_by), round(latent.shape[-2] * scale_by)
    return ({**samples, "samples": resample(latent, width, height, upscale_method)},)


def set_latent_noise_mask(context, samples: dict, mask):
    """Sample only where the mask is 1; elsewhere the latent is kept (latent blending at every step)."""
    return ({**samples, "noise_mask": mask_batch(mask)},)


register(
    NodeType(
        "EmptyLatentImage",
        empty_latent_image,
        (
            Input("width", "INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
            Input("height", "INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}),
            Input("batch_size", "INT", {"default": 1, "min": 1, "max": 4096}),
        ),
        ("LATENT",),
        category="latent",
        display_name="Empty Latent Image",
        description="Creates a batch of empty latent images to be denoised by sampling.",
    )
)
register(
    NodeType(
        "LatentUpscale",
        latent_upscale,
        (
            Input("samples", "LATENT"),
            Input("upscale_method", "COMBO", choices=LATENT_METHODS),
            Input("width", "INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
            Input("height", "INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 8}),
            Input("crop", "COMBO", choices=CROP),
        ),
        ("LATENT",),
        category="latent",
        display_name="Upscale Latent",
        description="Resizes latents to an image size (0 keeps the aspect ratio).",
    )
)
register(
    NodeType(
        "LatentUpscaleBy",
        latent_upscale_by,
        (
            Input("samples", "LATENT"),
            Input("upscale_method", "COMBO", choices=LATENT_METHODS),
            Input("scale_by", "FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01}),
        ),
        ("LATENT",),
        category="latent",
        display_name="Upscale Latent By",
        description="Resizes latents by a factor.",
    )
)
register(
    NodeType(
        "SetLatentNoiseMask",
        set_latent_noise_mask,
        (Input("samples", "LATENT"), Input("mask", "MASK")),
        ("LATENT",),
        category="latent/inpaint",
        display_name="Set Latent Noise Mask",
        description="Restricts sampling to the masked part of the latent.",
    )
)
