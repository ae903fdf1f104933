"""Control images for ControlNet training: a `name.control.png` beside `name.png`, else the preprocessor's
map of the image (canny, scribble, depth), computed once and cached by image content, kind and options."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.io.atomic import atomic_path
from lienzo.training.buckets import cover_crop
from lienzo.training.captioned_dataset import CONTROL_IMAGE_SUFFIX as CONTROL_SUFFIX
from lienzo.training.captioned_dataset import CaptionedDataset, Example

CONTROL_KINDS = ("canny", "scribble", "depth")
CONTROL_CACHE = "control_cache"
EXAMPLES = 10


def control_file(image: Path) -> Path:
    """The control image given beside a training image: `name.png` -> `name.control.png`."""
    return image.with_name(image.stem + CONTROL_SUFFIX)


def cache_key(image: Path, kind: str, options: dict) -> str:
    """sha256 of the image file's bytes, the preprocessor's name and its options."""
    digest = hashlib.sha256(image.read_bytes())
    digest.update(json.dumps([kind, sorted(options.items())]).encode())
    return digest.hexdigest()


def check_control_kind(kind: str | None) -> None:
    """Refuse a control kind no preprocessor makes."""
    if kind is not None and kind not in CONTROL_KINDS:
        raise InvalidArgumentError(f"unknown control kind {kind!r}; choose one of {', '.join(CONTROL_KINDS)}")


Preprocessor = Callable[..., Image.Image]
"""`preprocess(kind, image, **options)`: lienzo.pipelines.preprocessors.preprocess (passed in: training does
not import pipelines)."""


def control_paths(
    examples: list[Example],
    kind: str | None,
    cache: Path,
    options: dict | None = None,
    preprocess: Preprocessor | None = None,
) -> list[Path]:
    """Each example's control image: its `name.control.png` when given, else (with `kind`) the cached
    preprocessor map made by `preprocess`, now when missing. Without `kind` every image needs its control
    file."""
    options = dict(options or {})
    check_control_kind(kind)
    if kind is not None and preprocess is None:
        raise ValueError("control_paths needs `preprocess` to make control images")
    if kind is None:
        missing = [example.path for example in examples if not control_file(example.path).is_file()]
        if missing:
            names = ", ".join(path.name for path in missing[:EXAMPLES])
            raise InvalidArgumentError(
                f"{len(missing)} image(s) have no control image: {names}; put NAME{CONTROL_SUFFIX} beside "
                "each NAME.png, or pass --control canny|scribble|depth to compute them"
            )
    paths = []
    for example in examples:
        given = control_file(example.path)
        if given.is_file():
            paths.append(given)
            continue
        cached = cache / f"{cache_key(example.path, kind, options)}.png"
        if not cached.is_file():
            with Image.open(example.path) as image:
                made = preprocess(kind, image.convert("RGB"), **options)
            cache.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as temporary:
                made.save(temporary, format="PNG")
        paths.append(cached)
    return paths


def hint_tensor_at(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """The control image scaled and centre-cropped to `size` as its training image is, (3, H, W) in [0, 1]."""
    with Image.open(path) as image:
        fitted = cover_crop(image.convert("RGB"), size)
    array = np.asarray(fitted, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array))


@dataclass(frozen=True)
class ControlledDataset:
    """A CaptionedDataset's items with each image's control image added as "hint"."""

    dataset: CaptionedDataset
    controls: tuple[Path, ...]

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        chosen = self.dataset.example_index(index)
        item["hint"] = hint_tensor_at(self.controls[chosen], self.dataset.examples[chosen].size)
        return item
