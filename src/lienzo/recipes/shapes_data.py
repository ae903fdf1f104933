"""Datasets of the shapes recipe: random crops for the VAE and a pool of pre-encoded latents for the UNet."""

from __future__ import annotations

import numpy as np
import torch

from ..models.vae import AutoencoderKL
from ..training.precision import autocast, autocast_dtype
from ..worlds.dataset import ShapesDataConfig, ShapesDataset, image_to_array, scene_and_caption
from ..worlds.shapes import caption


class RandomCrops:
    """Square crops of `size` pixels from a dataset's images; crop i depends only on (seed, i).

    A convolutional VAE trained on crops (as SD's was, on 256-pixel crops) learns the same
    reconstruction at a fraction of the cost of full images."""

    def __init__(self, dataset: ShapesDataset, size: int, seed: int = 0):
        self.dataset, self.size, self.seed = dataset, size, seed

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        image, text = self.dataset[index]
        rng = np.random.default_rng([self.seed, index, 1])
        top, left = rng.integers(0, image.shape[1] - self.size + 1, size=2)
        return image[:, top : top + self.size, left : left + self.size], text


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKL, config: ShapesDataConfig, count: int, *, batch_size: int = 64
) -> torch.Tensor:
    """VAE posterior moments (mean and log-variance on channels) of the first `count` scenes, float16."""
    dataset = ShapesDataset(config)
    device = vae.quant_conv.weight.device
    dtype = autocast_dtype("auto", device)
    chunks = []
    for start in range(0, count, batch_size):
        indices = range(start, min(start + batch_size, count))
        images = np.stack([image_to_array(dataset.example(index).image) for index in indices])
        with autocast(device, dtype):
            posterior = vae.encode(torch.from_numpy(images).to(device))
        chunks.append(torch.cat([posterior.mean, posterior.logvar], dim=1).half().cpu())
    return torch.cat(chunks)


class LatentPool:
    """Endless (posterior moments, caption) pairs over a pool of pre-encoded scenes.

    Visit k of scene i gets a fresh caption (sizes and positions dropped at the data config's rates),
    drawn from (seed, global index), so the text side never repeats exactly while the VAE runs once."""

    def __init__(self, moments: torch.Tensor, config: ShapesDataConfig):
        self.moments, self.config = moments, config

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        scene_index = index % self.moments.shape[0]
        scene, _ = scene_and_caption(self.config, scene_index)
        rng = np.random.default_rng([self.config.seed, index, 2])
        text = caption(scene, rng, drop_size=self.config.drop_size, drop_position=self.config.drop_position)
        return self.moments[scene_index].float(), text
