"""How well a saliency map (e.g. a word's cross-attention map) covers a region of a shapes-world image.

The region comes from the image itself, read as the scorer reads it (snap to the palette, background from
the border, 4-connected regions of one colour); the map's top N pixels, N being the region's area, are
compared with the region by intersection over union.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.worlds.scorer import border_colour, label_regions, snap_to_palette


def object_and_background_masks(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(largest object's mask, background mask) of an image, at its own size: the background is every
    pixel of the border's palette colour, the object the largest region of one other colour."""
    indices = snap_to_palette(image)
    background = indices == border_colour(indices)
    labels = label_regions(indices, ~background)
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=1)
    if not counts.any():
        raise InvalidArgumentError("the image holds no object: every pixel has the background's colour")
    return labels == int(counts.argmax()), background


def top_n_iou(values: np.ndarray, region: np.ndarray) -> float:
    """IoU of the map's `region.sum()` highest pixels with `region` (ties broken by position)."""
    if values.shape != region.shape:
        raise InvalidArgumentError(f"the map is {values.shape} but the region is {region.shape}; match them")
    area = int(region.sum())
    if area == 0:
        raise InvalidArgumentError("the region is empty; there is nothing to overlap")
    chosen = np.zeros(values.size, dtype=bool)
    chosen[np.argsort(-values.ravel(), kind="stable")[:area]] = True
    chosen = chosen.reshape(values.shape)
    return float((chosen & region).sum() / (chosen | region).sum())
