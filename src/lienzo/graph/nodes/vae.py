"""VAE nodes: VAEDecode, VAEEncode, their tiled forms, VAEEncodeForInpaint and InpaintModelConditioning."""

from __future__ import annotations

import functools
from dataclasses import replace

import torch
import torch.nn.functional as F

from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.values import SCALE_KEY, images_to_pixels, latent_for, mask_batch, pil_to_images
from lienzo.models.vae_tiling import decode_tiled, encode_tiled
from lienzo.pipelines.masking import masked_image
from lienzo.pipelines.steps import decode_latents, encode_images
from lienzo.pipelines.tensor_images import grow_mask

TILE = {"default": 512, "min": 64, "max": 4096, "step": 32}
OVERLAP = {"default": 64, "min": 0, "max": 4096, "step": 32}
TEMPORAL_SIZE = {"default": 64, "min": 8, "max": 4096, "step": 4}
TEMPORAL_OVERLAP = {"default": 8, "min": 4, "max": 4096, "step": 4}
"""ComfyUI's video VAE settings; images have no time axis, so lienzo accepts and ignores them."""


def cropped_pixels(vae, pixels: torch.Tensor) -> torch.Tensor:
    """An IMAGE as lienzo pixels in [-1, 1], cropped to multiples of the VAE's factor (as ComfyUI)."""
    factor = vae.downscale_factor
    height, width = pixels.shape[1] // factor * factor, pixels.shape[2] // factor * factor
    return images_to_pixels(pixels[:, :height, :width])


def vae_decode(context, samples: dict, vae):
    """Decode latents into images."""
    return (
        pil_to_images(
            decode_latents(vae, latent_for(samples, vae.config.scaling_factor, vae.config.embed_dim))
        ),
    )


def vae_encode(context, pixels, vae):
    """Encode images into latents."""
    return (tagged(vae, encode_images(vae, cropped_pixels(vae, pixels))),)


def tagged(vae, latents: torch.Tensor, **more) -> dict:
    """A LATENT of the VAE's latents, tagged with its scaling factor."""
    return {"samples": latents, SCALE_KEY: vae.config.scaling_factor, **more}


def tiled(vae, tile_size: int, overlap: int, decode: bool):
    """The VAE's decode or encode over tiles of tile_size pixels sharing overlap pixels, in latent cells."""
    factor = vae.downscale_factor
    tile = max(1, tile_size // factor)
    shared = min(overlap // factor, tile - 1)
    return functools.partial(decode_tiled if decode else encode_tiled, vae, tile=tile, overlap=shared)


def vae_decode_tiled(
    context, samples: dict, vae, tile_size: int, overlap: int, temporal_size=64, temporal_overlap=8
):
    """Decode latents tile by tile (less memory for large images)."""
    decode = tiled(vae, tile_size, overlap, decode=True)
    weight = next(vae.parameters())
    images = []
    with torch.inference_mode():
        for item in latent_for(samples, vae.config.scaling_factor, vae.config.embed_dim):
            scaled = (item[None] / vae.config.scaling_factor).to(device=weight.device, dtype=weight.dtype)
            images.append(decode(scaled).float().cpu())
    return ((torch.cat(images).permute(0, 2, 3, 1) / 2 + 0.5).clamp(0, 1),)


def vae_encode_tiled(
    context, pixels, vae, tile_size: int, overlap: int, temporal_size=64, temporal_overlap=8
):
    """Encode images tile by tile (less memory for large images)."""
    encode = tiled(vae, tile_size, overlap, decode=False)
    weight = next(vae.parameters())
    latents = []
    with torch.inference_mode():
        for item in cropped_pixels(vae, pixels):
            latents.append(encode(item[None].to(device=weight.device, dtype=weight.dtype)).mean.float().cpu())
    return (tagged(vae, torch.cat(latents) * vae.config.scaling_factor),)


def pixel_mask(mask, pixels: torch.Tensor) -> torch.Tensor:
    """A MASK as (B, 1, H, W) at the pixels' size (bilinear)."""
    return F.interpolate(mask_batch(mask), size=tuple(pixels.shape[-2:]), mode="bilinear")


def vae_encode_for_inpaint(context, pixels, vae, mask, grow_mask_by: int):
    """Encode images with the masked part greyed out; the latent's noise mask is the mask grown."""
    lienzo_pixels = cropped_pixels(vae, pixels)
    full = pixel_mask(mask, lienzo_pixels)
    latent = encode_images(vae, masked_image(lienzo_pixels, full.round()))
    return (tagged(vae, latent, noise_mask=grow_mask(full, grow_mask_by)),)


def inpaint_model_conditioning(context, positive, negative, vae, pixels, mask, noise_mask: bool = True):
    """The latent of the image (with the mask as noise mask) and conditionings that carry the mask and the
    masked image's latent (unscaled), which 9-channel inpaint models take as extra input."""
    lienzo_pixels = cropped_pixels(vae, pixels)
    full = pixel_mask(mask, lienzo_pixels).round()
    masked = encode_images(vae, masked_image(lienzo_pixels, full)) / vae.config.scaling_factor
    latent = tagged(vae, encode_images(vae, lienzo_pixels))
    if noise_mask:
        latent["noise_mask"] = full
    extra = {"concat_latent": masked, "concat_mask": full}
    return (
        [replace(entry, **extra) for entry in positive],
        [replace(entry, **extra) for entry in negative],
        latent,
    )


register(
    NodeType(
        "VAEDecode",
        vae_decode,
        (Input("samples", "LATENT"), Input("vae", "VAE")),
        ("IMAGE",),
        category="latent",
        display_name="VAE Decode",
        description="Decodes latent images back into pixel space images.",
    )
)
register(
    NodeType(
        "VAEEncode",
        vae_encode,
        (Input("pixels", "IMAGE"), Input("vae", "VAE")),
        ("LATENT",),
        category="latent",
        display_name="VAE Encode",
        description="Encodes images into latents.",
    )
)
TILED_INPUTS = (
    Input("tile_size", "INT", TILE),
    Input("overlap", "INT", OVERLAP),
    Input("temporal_size", "INT", TEMPORAL_SIZE, optional=True),
    Input("temporal_overlap", "INT", TEMPORAL_OVERLAP, optional=True),
)
register(
    NodeType(
        "VAEDecodeTiled",
        vae_decode_tiled,
        (Input("samples", "LATENT"), Input("vae", "VAE"), *TILED_INPUTS),
        ("IMAGE",),
        category="_for_testing",
        display_name="VAE Decode (Tiled)",
        description="Decodes latents in overlapping tiles (the temporal settings are for video and ignored).",
    )
)
register(
    NodeType(
        "VAEEncodeTiled",
        vae_encode_tiled,
        (Input("pixels", "IMAGE"), Input("vae", "VAE"), *TILED_INPUTS),
        ("LATENT",),
        category="_for_testing",
        display_name="VAE Encode (Tiled)",
        description="Encodes images in overlapping tiles (the temporal settings are for video and ignored).",
    )
)
register(
    NodeType(
        "VAEEncodeForInpaint",
        vae_encode_for_inpaint,
        (
            Input("pixels", "IMAGE"),
            Input("vae", "VAE"),
            Input("mask", "MASK"),
            Input("grow_mask_by", "INT", {"default": 6, "min": 0, "max": 64, "step": 1}),
        ),
        ("LATENT",),
        category="latent/inpaint",
        display_name="VAE Encode (for Inpainting)",
        description="Encodes images with the masked part greyed out, for inpainting at full denoise.",
    )
)
register(
    NodeType(
        "InpaintModelConditioning",
        inpaint_model_conditioning,
        (
            Input("positive", "CONDITIONING"),
            Input("negative", "CONDITIONING"),
            Input("vae", "VAE"),
            Input("pixels", "IMAGE"),
            Input("mask", "MASK"),
            Input("noise_mask", "BOOLEAN", {"default": True}),
        ),
        ("CONDITIONING", "CONDITIONING", "LATENT"),
        output_names=("positive", "negative", "latent"),
        category="conditioning/inpaint",
        display_name="InpaintModelConditioning",
        description="Conditions an inpaint model on the mask and masked image; sets the latent's noise mask.",
    )
)
