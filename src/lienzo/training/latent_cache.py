"""Latent caching: each training image VAE-encoded once into posterior moments, kept on disk under the run
folder, keyed by the image file's content and its training size, so a resumed or repeated run skips it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from lienzo.io.formats import file_sha256, write_safetensors
from lienzo.models.vae import AutoencoderKL
from lienzo.training.captioned_dataset import CaptionedDataset, image_tensor

CACHE_FOLDER = "latent_cache"
KEY_DIGITS = 24


def cache_key(path: Path, size: tuple[int, int], vae: AutoencoderKL) -> str:
    """The cache file stem: the image's sha256, its training size and the VAE's config."""
    vae_tag = hashlib.sha256(repr(vae.config).encode()).hexdigest()[:8]
    return f"{file_sha256(path)[:KEY_DIGITS]}_{size[0]}x{size[1]}_{vae_tag}"


@torch.no_grad()
def cache_latents(dataset: CaptionedDataset, vae: AutoencoderKL, folder: Path) -> None:
    """Encode every example not cached yet into `folder` (float32 moments, written atomically) and make
    `dataset` yield the cached moments instead of images (the objective then takes encoded_inputs)."""
    folder.mkdir(parents=True, exist_ok=True)
    device = vae.quant_conv.weight.device
    files = {}
    for index, example in enumerate(dataset.examples):
        target = folder / f"{cache_key(example.path, example.size, vae)}.safetensors"
        if not target.is_file():
            image = image_tensor(example.path, example.size).unsqueeze(0).to(device)
            posterior = vae.encode(image)
            moments = torch.cat([posterior.mean, posterior.logvar], dim=1)[0].float().cpu()
            write_safetensors(target, {"moments": moments})
        files[index] = target
    dataset.latents = files
