"""What travels along a graph's links: models, CLIP with its clip skip, images and masks as ComfyUI
holds them (IMAGE: (B, H, W, 3) floats in [0, 1]; MASK: (B, H, W) floats, 1 = masked)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.fast_modes import check_fast_modes
from lienzo.pipelines.images import images_to_tensor, tensor_to_images
from lienzo.pipelines.pipeline import Pipeline
from lienzo.text.conditioning import TextEncoders


@dataclass(frozen=True)
class ClipModel:
    """CLIP as a graph passes it: the Pipeline whose text encoders (and their LoRAs) it uses, and the
    A1111 clip skip (1 = last layer) that CLIPSetLastLayer sets."""

    pipe: Pipeline
    clip_skip: int = 1

    @property
    def encoders(self) -> TextEncoders:
        return self.pipe.clip


def model_view(pipe: Pipeline) -> Pipeline:
    """A new view of `pipe` as a graph node passes MODEL on: its VAE, LoRAs and fast modes carried over
    (the input Pipeline is left as it is)."""
    view = pipe.view()
    view.vae, view.vae_name, view.fast = pipe.vae, pipe.vae_name, pipe.fast
    for key, (loaded, unet, text) in pipe.loras.applied.items():
        view.loras.add_file(loaded.path, unet, text_strength=text, key=key)
    return view


def with_lora(pipe: Pipeline, path: Path, unet_strength: float, text_strength: float) -> Pipeline:
    """A new view of `pipe` with one more LoRA (`model_view`)."""
    view = model_view(pipe)
    view.loras.add_file(
        path, unet_strength, text_strength=text_strength, key=f"graph:{len(pipe.loras.applied)}:{path.stem}"
    )
    return view


def with_fast_modes(pipe: Pipeline, **modes) -> Pipeline:
    """A new view of `pipe` whose fast modes (lienzo.FastModes fields) are `modes`, the others kept."""
    view = model_view(pipe)
    view.fast = replace(pipe.fast, **modes)
    check_fast_modes(view.fast)
    return view


def require_exact(pipe: Pipeline, node: str) -> None:
    """Refuse a MODEL with fast modes in a node that samples only on the exact path."""
    if not pipe.fast.exact:
        raise InvalidArgumentError(
            f"{node} samples on the exact path and cannot apply the model's fast modes "
            f"({pipe.fast}); take its model from before the TomePatchModel or LienzoFastModes node"
        )


SCALE_KEY = "scaling_factor"
"""A LATENT's scaling factor: latents = factor * VAE posterior mean, tagged by the VAE or model that made
them, so a VAE or model with another factor reads them rescaled (ComfyUI's latent formats)."""


def latent_for(latent: dict, factor: float, channels: int) -> torch.Tensor:
    """A LATENT's samples at a model's scaling factor (as they are when untagged) and latent `channels`.
    An empty latent (all zeros) takes the model's channel count, as ComfyUI widens EmptyLatentImage's
    4 channels for models of wider latents; a latent of another width is refused."""
    samples = latent["samples"]
    if samples.shape[1] != channels:
        if torch.count_nonzero(samples):
            raise InvalidArgumentError(
                f"this latent has {samples.shape[1]} channels but the model's latents have {channels}; "
                "encode the image with this model's VAE (VAEEncode) or start from EmptyLatentImage"
            )
        return samples.new_zeros(samples.shape[0], channels, *samples.shape[2:])
    return samples * (factor / latent.get(SCALE_KEY, factor))


def images_to_pixels(images: torch.Tensor) -> torch.Tensor:
    """An IMAGE (B, H, W, 3) in [0, 1] as lienzo's (B, 3, H, W) pixels in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() * 2 - 1


def pil_to_images(images: list[Image.Image]) -> torch.Tensor:
    """An IMAGE from same-sized PIL images."""
    return (images_to_tensor(images).permute(0, 2, 3, 1) + 1) / 2


def images_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """PIL images of an IMAGE (rounded to 8 bits)."""
    return tensor_to_images(images_to_pixels(images))


def mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """A MASK as (B, 1, H, W) (a single (H, W) mask as a batch of one)."""
    if mask.ndim == 2:
        mask = mask[None]
    return mask[:, None].float()
