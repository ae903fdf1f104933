"""Batches: dataset items (one dict per sample) collated into the batch dict every objective reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lienzo.errors import InvalidArgumentError

Batch = dict[str, Any]
"""A collated batch by key: tensors stacked on a new first dimension, strings and other values in lists."""


def check_items(items: Sequence[object]) -> list[str]:
    """The keys every item shares, or an error naming the item that is not a dict or differs in keys."""
    if not items:
        raise InvalidArgumentError("a batch needs at least one item; use a batch_size of 1 or more")
    for position, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidArgumentError(
                f"batch item {position} is a {type(item).__name__}, not a dict; a training dataset's "
                "__getitem__ must return a dict such as {'image': tensor, 'caption': str}"
            )
    keys = list(items[0])
    for position, item in enumerate(items[1:], start=1):
        missing, extra = sorted(set(keys) - set(item)), sorted(set(item) - set(keys))
        if missing or extra:
            difference = f"lacks {missing}" if missing else f"adds {extra}"
            raise InvalidArgumentError(
                f"batch item {position} {difference} (item 0 holds {sorted(keys)}); every item of a "
                "training dataset must hold the same keys"
            )
    return keys


def collate(items: Sequence[Mapping[str, Any]]) -> Batch:
    """One batch dict from item dicts: each key's tensors stacked into (B, ...), other values listed."""
    batch: Batch = {}
    for key in check_items(items):
        values = [item[key] for item in items]
        if not all(isinstance(value, torch.Tensor) for value in values):
            batch[key] = values
            continue
        shapes = sorted({tuple(value.shape) for value in values})
        if len(shapes) > 1:
            raise InvalidArgumentError(
                f"batch key {key!r} holds tensors of shapes {shapes}; every item of a batch needs the "
                "same shape (crop or resize the images to one size)"
            )
        batch[key] = torch.stack(values)
    return batch


def batch_value(batch: Batch, key: str, reader: str) -> Any:
    """`batch[key]`, or an error saying that `reader` needs the dataset's items to hold `key`."""
    if key not in batch:
        raise InvalidArgumentError(
            f"{reader} reads batch key {key!r}, but the dataset's items hold only {sorted(batch)}; "
            f"return {key!r} in every item of the dataset"
        )
    return batch[key]
