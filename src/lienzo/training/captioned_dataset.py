"""Fine-tuning data: a folder of images with same-stem `.txt` captions (kohya / A1111), repeats, shuffled
comma tags, aspect-ratio buckets and cached latents, as batch-aligned dict items for the training loop."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lienzo.errors import InvalidArgumentError, ModelNotFoundError
from lienzo.io.formats import read_state_dict
from lienzo.training.buckets import bucket_resolutions, cover_crop, nearest_bucket
from lienzo.training.image_folder import CAPTION_SUFFIX, IMAGE_SUFFIXES, unreadable_images

REPEATS_FOLDER = re.compile(r"(\d+)_(.+)")
"""kohya's `<repeats>_<name>` sub-folder, e.g. `10_star`: its images count ten times per epoch."""
EXAMPLES = 10
CONTROL_IMAGE_SUFFIX = ".control.png"
"""A ControlNet training set's control image beside its image (`name.png` + `name.control.png`): not an
image to train on."""


@dataclass(frozen=True)
class DataConfig:
    """How a captioned folder becomes training items.

    `repeats` counts each image that many times per epoch (a kohya `N_name` sub-folder sets its own);
    `shuffle_tags` shuffles the comma-separated tags of each caption, keeping the first `keep_tokens`
    in place (kohya's --shuffle_caption / --keep_tokens); `buckets` trains each image at the
    aspect-ratio bucket nearest its shape instead of a centre-cropped square of `resolution`."""

    folder: Path
    resolution: int = 512
    repeats: int = 1
    shuffle_tags: bool = False
    keep_tokens: int = 0
    buckets: bool = False
    bucket_step: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.resolution % 8:
            raise InvalidArgumentError(f"--resolution must be a multiple of 8, got {self.resolution}")
        if self.repeats < 1:
            raise InvalidArgumentError(f"--repeats must be at least 1, got {self.repeats}")
        if self.keep_tokens < 0:
            raise InvalidArgumentError(f"--keep-tokens must be 0 or more, got {self.keep_tokens}")


@dataclass(frozen=True)
class Example:
    """One training image: its file, its caption text, how often it repeats and its training size."""

    path: Path
    caption: str
    repeats: int
    size: tuple[int, int]


def image_files(folder: Path, repeats: int) -> list[tuple[Path, int]]:
    """(image, repeats) for the folder's images and those of its kohya `N_name` sub-folders (control images
    left out)."""
    found = [(path, repeats) for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    for sub in sorted(path for path in folder.iterdir() if path.is_dir()):
        match = REPEATS_FOLDER.fullmatch(sub.name)
        if match:
            count = int(match.group(1))
            found += [
                (path, count) for path in sorted(sub.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES
            ]
    return [
        (path, count)
        for path, count in found
        if path.is_file() and count > 0 and not path.name.lower().endswith(CONTROL_IMAGE_SUFFIX)
    ]


def read_examples(config: DataConfig) -> list[Example]:
    """Every image of the folder with its caption and size, checked: a missing or empty folder, images
    without a caption file and unreadable images are errors naming the files."""
    folder = Path(config.folder)
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"--data folder {folder} does not exist; give a folder of images and captions"
        )
    files = image_files(folder, config.repeats)
    if not files:
        raise InvalidArgumentError(
            f"--data folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); put the training images "
            "there, each with a same-name .txt caption"
        )
    uncaptioned = [path for path, _ in files if not path.with_suffix(CAPTION_SUFFIX).is_file()]
    if uncaptioned:
        names = ", ".join(str(path.relative_to(folder)) for path in uncaptioned[:EXAMPLES])
        more = f" and {len(uncaptioned) - EXAMPLES} more" if len(uncaptioned) > EXAMPLES else ""
        raise InvalidArgumentError(
            f"{len(uncaptioned)} image(s) in {folder} have no caption file: {names}{more}; add a .txt file "
            "with the same name beside each image"
        )
    broken = unreadable_images([path for path, _ in files])
    if broken:
        raise InvalidArgumentError(
            f"{len(broken)} image(s) in {folder} cannot be read: {', '.join(broken[:EXAMPLES])}; "
            "fix or remove them and start again"
        )
    buckets = bucket_resolutions(config.resolution, config.bucket_step) if config.buckets else None
    examples = []
    for path, repeats in files:
        with Image.open(path) as image:
            natural = image.size
        size = nearest_bucket(natural, buckets) if buckets else (config.resolution, config.resolution)
        caption = path.with_suffix(CAPTION_SUFFIX).read_text(encoding="utf-8").strip()
        examples.append(Example(path, caption, repeats, size))
    return examples


def shuffle_tags(caption: str, keep_tokens: int, rng: np.random.Generator) -> str:
    """The caption's comma-separated tags shuffled, the first `keep_tokens` tags left in front."""
    tags = [tag.strip() for tag in caption.split(",")]
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    order = rng.permutation(len(rest))
    return ", ".join(kept + [rest[index] for index in order])


def image_tensor(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """The image scaled and centre-cropped to `size` (width, height), as (3, H, W) in [-1, 1]."""
    with Image.open(path) as image:
        fitted = cover_crop(image.convert("RGB"), size)
    array = np.asarray(fitted, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(array))


class CaptionedDataset:
    """Endless, batch-aligned items {"image": (3, H, W) in [-1, 1] or cached moments, "caption": str}.

    Global index i belongs to batch i // batch_size. Each epoch lists every image `repeats` times,
    shuffles them (seeded by the epoch), groups them by bucket into full batches (a bucket's last batch is
    filled from its start) and shuffles the batches, so every batch shares one size and the loop's
    consecutive indices (per rank under DDP) never mix buckets. Everything is drawn from (seed, epoch)
    or (seed, index), so a resumed run sees the same data."""

    def __init__(self, config: DataConfig, batch_size: int, examples: list[Example] | None = None):
        self.config = config
        self.batch_size = batch_size
        self.examples = read_examples(config) if examples is None else examples
        self.latents: dict[int, Path] | None = None
        self._epoch: tuple[int, list[list[int]]] | None = None
        self.batches_per_epoch = len(self.epoch_batches(0))

    @property
    def epoch_samples(self) -> int:
        """Samples in one epoch (every image times its repeats, rounded up to whole batches per bucket).

        The dataset has no `len`: the loop then hands it ever-growing indices, and every epoch is shuffled
        anew instead of repeating the first."""
        return self.batches_per_epoch * self.batch_size

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches as lists of example indices."""
        if self._epoch is not None and self._epoch[0] == epoch:
            return self._epoch[1]
        rng = np.random.default_rng([self.config.seed, epoch])
        listed = [index for index, example in enumerate(self.examples) for _ in range(example.repeats)]
        listed = [listed[position] for position in rng.permutation(len(listed))]
        by_size: dict[tuple[int, int], list[int]] = {}
        for index in listed:
            by_size.setdefault(self.examples[index].size, []).append(index)
        batches = []
        for members in by_size.values():
            for start in range(0, len(members), self.batch_size):
                batch = [members[(start + k) % len(members)] for k in range(self.batch_size)]
                batches.append(batch)
        batches = [batches[position] for position in rng.permutation(len(batches))]
        self._epoch = (epoch, batches)
        return batches

    def example_index(self, index: int) -> int:
        """The example at global sample index `index`."""
        batch, slot = divmod(index, self.batch_size)
        epoch, position = divmod(batch, self.batches_per_epoch)
        return self.epoch_batches(epoch)[position][slot]

    def caption(self, index: int, example: Example) -> str:
        """The example's caption as seen at global index `index` (tags shuffled when asked)."""
        if not self.config.shuffle_tags:
            return example.caption
        rng = np.random.default_rng([self.config.seed, index, 1])
        return shuffle_tags(example.caption, self.config.keep_tokens, rng)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        chosen = self.example_index(index)
        example = self.examples[chosen]
        if self.latents is not None:
            image = read_state_dict(self.latents[chosen])["moments"]
        else:
            image = image_tensor(example.path, example.size)
        return {"image": image, "caption": self.caption(index, example)}

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ss_tag_frequency: per folder, how many captions hold each comma tag."""
        frequency: dict[str, dict[str, int]] = {}
        for example in self.examples:
            counts = frequency.setdefault(example.path.parent.name, {})
            for tag in {tag.strip() for tag in example.caption.split(",") if tag.strip()}:
                counts[tag] = counts.get(tag, 0) + 1
        return frequency

    def bucket_counts(self) -> dict[str, int]:
        """Images per bucket size "WxH"."""
        counts: dict[str, int] = {}
        for example in self.examples:
            key = f"{example.size[0]}x{example.size[1]}"
            counts[key] = counts.get(key, 0) + 1
        return counts
