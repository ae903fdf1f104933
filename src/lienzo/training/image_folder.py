"""A folder of images with captions beside them (kohya / A1111 layout), checked before training starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lienzo.errors import InvalidArgumentError, ModelNotFoundError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIX = ".txt"


def unreadable_images(paths: list[Path]) -> list[str]:
    """`name (reason)` for each file PIL cannot open and decode completely."""
    problems = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            problems.append(f"{path.name} ({type(error).__name__})")
    return problems


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Scale the short side to `resolution` (Lanczos), then crop the centre square."""
    width, height = image.size
    scale = resolution / min(width, height)
    resized = image.resize(
        (max(resolution, round(width * scale)), max(resolution, round(height * scale))),
        Image.Resampling.LANCZOS,
    )
    left = (resized.width - resolution) // 2
    top = (resized.height - resolution) // 2
    return resized.crop((left, top, left + resolution, top + resolution))


class ImageFolderDataset:
    """{"image": tensor (3, R, R) in [-1, 1], "caption": str} for every image in a folder.

    `photo.png` takes its caption from `photo.txt` (empty when absent), as kohya's sd-scripts and
    A1111 read training folders. Every image is opened once up front, so a broken file stops the
    run before any training step with an error that lists the files to fix or remove.
    """

    def __init__(self, folder: str | Path, resolution: int = 512):
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelNotFoundError(f"dataset folder {folder} does not exist; check the path")
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise InvalidArgumentError(
                f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); use a folder of images"
            )
        broken = unreadable_images(self.paths)
        if broken:
            raise InvalidArgumentError(
                f"{len(broken)} image(s) in {folder} cannot be read: {', '.join(broken[:10])}; "
                "fix or remove them and start again"
            )
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.paths)

    def caption(self, index: int) -> str:
        """The caption file's text beside image `index`, stripped; "" when there is none."""
        caption_file = self.paths[index].with_suffix(CAPTION_SUFFIX)
        return caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        with Image.open(self.paths[index]) as image:
            square = center_crop_resize(image.convert("RGB"), self.resolution)
        array = np.asarray(square, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        return {"image": torch.from_numpy(np.ascontiguousarray(array)), "caption": self.caption(index)}
