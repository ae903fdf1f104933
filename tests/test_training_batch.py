"""Batch dicts: dataset items collated by key (tensors stacked, other values listed), and clear errors."""

from __future__ import annotations

import pytest
import torch

from lienzo.errors import InvalidArgumentError
from lienzo.training import collate
from lienzo.training.loop import batch_at
from test_training import SquaresDataset, tiny_objective


def test_collate_stacks_tensors_and_lists_strings_and_other_values():
    items = [
        {"image": torch.full((3, 4, 4), float(index)), "caption": f"c{index}", "class_index": index}
        for index in range(3)
    ]
    batch = collate(items)
    assert list(batch) == ["image", "caption", "class_index"]
    assert batch["image"].shape == (3, 3, 4, 4)
    assert [float(image[0, 0, 0]) for image in batch["image"]] == [0.0, 1.0, 2.0]
    assert batch["caption"] == ["c0", "c1", "c2"]
    assert batch["class_index"] == [0, 1, 2]


def test_batch_at_wraps_finite_datasets_and_collates():
    class Two:
        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> dict:
            return {"caption": f"item {index}", "mask": torch.ones(1, 2, 2) * index}

    batch = batch_at(Two(), range(1, 4))
    assert batch["caption"] == ["item 1", "item 0", "item 1"]
    torch.testing.assert_close(batch["mask"][:, 0, 0, 0], torch.tensor([1.0, 0.0, 1.0]))


def test_a_key_missing_from_one_item_is_a_clear_error():
    items = [{"image": torch.zeros(3, 2, 2), "caption": "a"}, {"image": torch.zeros(3, 2, 2)}]
    with pytest.raises(InvalidArgumentError, match=r"batch item 1 lacks \['caption'\].*same keys"):
        collate(items)
    with pytest.raises(InvalidArgumentError, match=r"batch item 1 adds \['hint'\]"):
        collate([{"caption": "a"}, {"caption": "b", "hint": torch.zeros(1)}])


def test_items_that_are_not_dicts_or_differ_in_shape_are_clear_errors():
    with pytest.raises(InvalidArgumentError, match="tuple, not a dict.*'image'"):
        collate([(torch.zeros(3, 2, 2), "a caption")])
    with pytest.raises(InvalidArgumentError, match="'image' holds tensors of shapes.*same shape"):
        collate([{"image": torch.zeros(3, 2, 2)}, {"image": torch.zeros(3, 4, 4)}])
    with pytest.raises(InvalidArgumentError, match="at least one item"):
        collate([])


def test_an_objective_names_the_key_its_batch_lacks():
    batch = collate([{"image": SquaresDataset()[index]["image"]} for index in range(2)])
    with pytest.raises(InvalidArgumentError, match="LatentDiffusionObjective reads batch key 'caption'"):
        tiny_objective().loss(batch, torch.Generator().manual_seed(0), {})
