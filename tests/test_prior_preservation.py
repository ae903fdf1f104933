"""Prior preservation (DreamBooth's, and LoRA's and hypernetworks' with class images): one batch dict holds
the instance and class halves; the loss is the instance loss plus the weighted class loss, each the base
objective's loss of its half."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.training.batch import collate
from lienzo.training.captioned_dataset import CaptionedDataset, DataConfig
from lienzo.training.method_run import RunOptions
from lienzo.training.prior_preservation import (
    ClassImages,
    PriorPreservationDataset,
    PriorPreservationObjective,
    with_prior,
)


class Items:
    """Endless items {"image": a constant image, "caption": a tagged caption}."""

    def __init__(self, tag: str, value: float, count: int):
        self.tag, self.value, self.count = tag, value, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        slot = index % self.count
        return {"image": torch.full((3, 2, 2), self.value + slot), "caption": f"{self.tag} {slot}"}


class MeanObjective:
    """A stand-in base objective: the loss is the mean image value; it records the captions it saw."""

    def __init__(self):
        self.trainable = {"unet": torch.nn.Linear(1, 1)}
        self.seen: list[list[str]] = []

    def describe(self) -> dict:
        return {"base": True}

    def param_groups(self, learning_rate):
        return [{"name": "unet", "params": list(self.trainable["unet"].parameters()), "lr": learning_rate}]

    def loss(self, batch, generator, networks):
        self.seen.append(list(batch["caption"]))
        return batch["image"].mean()


def test_items_hold_both_halves_at_the_same_index():
    dataset = PriorPreservationDataset(Items("star", 0.0, 2), Items("class", 10.0, 3))
    batch = collate([dataset[index] for index in range(4)])
    assert set(batch) == {"image", "caption", "class_image", "class_caption"}
    assert batch["caption"] == ["star 0", "star 1", "star 0", "star 1"]
    assert batch["class_caption"] == ["class 0", "class 1", "class 2", "class 0"]
    assert batch["class_image"].shape == (4, 3, 2, 2)
    assert batch["class_image"][2].max().item() == 12.0


def test_loss_is_instance_plus_weighted_class_loss():
    base = MeanObjective()
    objective = PriorPreservationObjective(base, prior_loss_weight=0.5)
    dataset = PriorPreservationDataset(Items("star", 1.0, 1), Items("class", 10.0, 1))
    batch = collate([dataset[0], dataset[1]])
    loss = objective.loss(batch, torch.Generator(), {})
    assert loss.item() == pytest.approx(1.0 + 0.5 * 10.0)
    assert base.seen == [["star 0", "star 0"], ["class 0", "class 0"]]
    assert objective.trainable is base.trainable
    assert objective.describe() == {"base": True, "prior_loss_weight": 0.5}


def test_weight_zero_is_the_instance_loss_alone_and_negative_is_refused():
    base = MeanObjective()
    objective = PriorPreservationObjective(base, prior_loss_weight=0.0)
    loss = objective.loss(collate([Items("star", 3.0, 1)[0]]), torch.Generator(), {})
    assert loss.item() == 3.0 and base.seen == [["star 0"]]
    with pytest.raises(InvalidArgumentError, match="prior loss weight"):
        PriorPreservationObjective(base, prior_loss_weight=-1)


def test_a_batch_without_class_images_says_what_is_missing():
    objective = PriorPreservationObjective(MeanObjective(), prior_loss_weight=1.0)
    with pytest.raises(InvalidArgumentError, match="class_image"):
        objective.loss(collate([Items("star", 0.0, 1)[0]]), torch.Generator(), {})


def class_folder(folder, prompts: list[str]):
    """A class image folder as lienzo.recipes.class_images writes it: NNNNN.png, its prompt in NNNNN.txt."""
    folder.mkdir()
    for index, prompt in enumerate(prompts):
        Image.new("RGB", (16, 16), (index * 60, 0, 0)).save(folder / f"{index:05d}.png")
        (folder / f"{index:05d}.txt").write_text(prompt + "\n")
    return folder


def test_with_prior_pairs_the_class_images_and_weights_their_loss(tmp_path):
    options = RunOptions(
        DataConfig(class_folder(tmp_path / "stars", ["a star"] * 2), resolution=16), batch_size=2
    )
    instances = CaptionedDataset(options.data, options.batch_size)
    base = MeanObjective()
    classes = ClassImages(class_folder(tmp_path / "classes", ["a circle", "a square"]), weight=0.5)
    assert with_prior(options, None, instances, base, None, tmp_path) == (instances, base)
    assert with_prior(options, None, instances, base, replace(classes, weight=0.0), tmp_path) == (
        instances,
        base,
    )
    dataset, objective = with_prior(options, None, instances, base, classes, tmp_path)
    assert isinstance(dataset, PriorPreservationDataset) and dataset.instances is instances
    assert isinstance(objective, PriorPreservationObjective) and objective.prior_loss_weight == 0.5
    items = [dataset[index] for index in range(2)]
    assert sorted(item["class_caption"] for item in items) == ["a circle", "a square"]
    assert {item["caption"] for item in items} == {"a star"}
