"""DreamBooth's prior preservation (Ruiz et al. 2023, eq. 2): the latent diffusion loss of the instance
images plus a weighted loss of images the base model drew for the class, from one batch dict."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lienzo.errors import InvalidArgumentError
from lienzo.training.batch import Batch, batch_value
from lienzo.training.captioned_dataset import CaptionedDataset
from lienzo.training.latent_cache import CACHE_FOLDER, cache_latents
from lienzo.training.method_run import RunOptions
from lienzo.training.objective import LatentDiffusionObjective, Networks, ParamGroup


@dataclass(frozen=True)
class ClassImages:
    """A folder of class images (each `NAME.png` with its prompt in `NAME.txt`) and their loss's weight."""

    folder: Path
    weight: float = 1.0


class PriorPreservationDataset:
    """Item i: instance item i (its "image" and "caption") with class item i as "class_image" and
    "class_caption". Both are indexed by the same global index, as endless datasets are (a finite one
    wraps its own indices), so each batch pairs a batch of instances with a batch of class images."""

    def __init__(self, instances: Any, classes: Any):
        self.instances, self.classes = instances, classes

    def __getitem__(self, index: int) -> dict[str, Any]:
        instance: Mapping[str, Any] = self.instances[index]
        prior: Mapping[str, Any] = self.classes[index]
        return {**instance, "class_image": prior["image"], "class_caption": prior["caption"]}


class PriorPreservationObjective:
    """loss = L(instance half) + prior_loss_weight · L(class half), each half the base objective's loss
    (same noise schedule, parameterization, caption dropout); the base objective's modules are trained.
    A batch without class images (prior_loss_weight 0) is the base loss alone."""

    def __init__(self, base: LatentDiffusionObjective, prior_loss_weight: float = 1.0):
        if prior_loss_weight < 0:
            raise InvalidArgumentError(f"the prior loss weight must be 0 or more, got {prior_loss_weight}")
        self.base = base
        self.prior_loss_weight = prior_loss_weight
        self.trainable: dict[str, nn.Module] = base.trainable

    def describe(self) -> dict:
        return {**self.base.describe(), "prior_loss_weight": self.prior_loss_weight}

    def param_groups(self, learning_rate: float) -> list[ParamGroup]:
        return self.base.param_groups(learning_rate)

    def halves(self, batch: Batch) -> tuple[Batch, Batch]:
        """The instance half ("image", "caption") and the class half, as the base objective reads them."""
        reader = type(self).__name__
        instance = {key: value for key, value in batch.items() if not key.startswith("class_")}
        prior = {
            "image": batch_value(batch, "class_image", reader),
            "caption": batch_value(batch, "class_caption", reader),
        }
        return instance, prior

    def loss(self, batch: Batch, generator: torch.Generator, networks: Networks) -> torch.Tensor:
        if self.prior_loss_weight == 0:
            return self.base.loss(batch, generator, networks)
        instance, prior = self.halves(batch)
        instance_loss = self.base.loss(instance, generator, networks)
        return instance_loss + self.prior_loss_weight * self.base.loss(prior, generator, networks)


def with_class_images(
    options: RunOptions, model: Any, instances: CaptionedDataset, classes: ClassImages, cache_folder: Path
) -> PriorPreservationDataset:
    """The instance items paired with the class folder's items (its `.txt` prompts, no repeats or tag
    shuffling), the class images VAE-encoded once into `cache_folder` when the run caches latents."""
    data = replace(
        options.data, folder=classes.folder, repeats=1, shuffle_tags=False, seed=options.data.seed + 1
    )
    class_items = CaptionedDataset(data, options.batch_size)
    if options.cache_latents:
        cache_latents(class_items, model.vae, cache_folder)
    return PriorPreservationDataset(instances, class_items)


def with_prior(
    options: RunOptions,
    model: Any,
    instances: CaptionedDataset,
    objective: Any,
    classes: ClassImages | None,
    run_folder: Path,
) -> tuple[Any, Any]:
    """The dataset and objective a method trains: `instances` and `objective` as they are without class
    images (or at weight 0), else the class images paired in and their loss added at their weight."""
    if classes is None or classes.weight == 0:
        return instances, objective
    paired = with_class_images(options, model, instances, classes, run_folder / CACHE_FOLDER)
    return paired, PriorPreservationObjective(objective, classes.weight)
