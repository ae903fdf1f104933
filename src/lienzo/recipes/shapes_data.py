"""Datasets of the shapes recipe: random crops for the VAE and a pool of pre-encoded latents for the UNet."""

from __future__ import annotations

import numpy as np
import torch

from lienzo.errors import InvalidArgumentError
from lienzo.models.vae import AutoencoderKL
from lienzo.training.precision import autocast, autocast_dtype
from lienzo.worlds.dataset import ShapesDataConfig, ShapesDataset, image_to_array, scene_and_caption
from lienzo.worlds.shapes import caption


class RandomCrops:
    """A dataset's items with the "image" cropped to a square of `size` pixels; crop i depends only on
    (seed, i).

    A convolutional VAE trained on crops (as SD's was, on 256-pixel crops) learns the same
    reconstruction at a fraction of the cost of full images."""

    def __init__(self, dataset: ShapesDataset, size: int, seed: int = 0):
        self.dataset, self.size, self.seed = dataset, size, seed

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        item = self.dataset[index]
        image = item["image"]
        rng = np.random.default_rng([self.seed, index, 1])
        top, left = rng.integers(0, image.shape[1] - self.size + 1, size=2)
        return {**item, "image": image[:, top : top + self.size, left : left + self.size]}


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKL, config: ShapesDataConfig, count: int, *, batch_size: int = 64
) -> torch.Tensor:
    """VAE posterior moments (mean and log-variance on channels) of the first `count` scenes, float16;
    channels_last input spares oneDNN its layout reorders (1.4x faster on the 2-core CPU)."""
    dataset = ShapesDataset(config)
    device = vae.quant_conv.weight.device
    dtype = autocast_dtype("auto", device)
    chunks = []
    for start in range(0, count, batch_size):
        indices = range(start, min(start + batch_size, count))
        images = np.stack([image_to_array(dataset.example(index).image) for index in indices])
        batch = torch.from_numpy(images).to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            posterior = vae.encode(batch)
        chunks.append(torch.cat([posterior.mean, posterior.logvar], dim=1).half().cpu())
    return torch.cat(chunks)


class LatentPool:
    """Endless {"image": posterior moments, "caption": str} items over a pool of pre-encoded scenes.

    Visit k of scene i gets a fresh caption (sizes and positions dropped at the data config's rates),
    drawn from (seed, global index), so the text side never repeats exactly while the VAE runs once.
    With `two_object_share`, each draw picks a two-object scene with that probability (else a
    one-object scene), uniformly within the group: a phase can dwell on the harder compositions."""

    def __init__(
        self, moments: torch.Tensor, config: ShapesDataConfig, two_object_share: float | None = None
    ):
        self.moments, self.config, self.two_object_share = moments, config, two_object_share
        self.groups: dict[int, np.ndarray] = {}
        if two_object_share is not None:
            counts = np.array([len(scene_and_caption(config, i)[0].objects) for i in range(moments.shape[0])])
            self.groups = {count: np.flatnonzero(counts == count) for count in (1, 2)}
            if not all(len(group) for group in self.groups.values()):
                raise InvalidArgumentError(
                    "two_object_share needs a pool with both one- and two-object scenes; enlarge the pool"
                )

    def scene_index(self, index: int) -> int:
        """The pool scene that global draw `index` visits."""
        if self.two_object_share is None:
            return index % self.moments.shape[0]
        rng = np.random.default_rng([self.config.seed, index, 3])
        group = self.groups[2 if rng.random() < self.two_object_share else 1]
        return int(group[rng.integers(len(group))])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        scene_index = self.scene_index(index)
        scene, _ = scene_and_caption(self.config, scene_index)
        rng = np.random.default_rng([self.config.seed, index, 2])
        text = caption(scene, rng, drop_size=self.config.drop_size, drop_position=self.config.drop_position)
        return {"image": self.moments[scene_index].float(), "caption": text}
