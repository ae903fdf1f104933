"""DreamBooth's class images: drawn by the base model itself from the class prompt(s) with fixed seeds, and
kept in a cache folder keyed by the model's weights, the prompts, the count and the size, so a rerun (or
another run on the same model and class) reuses them instead of drawing them again."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from lienzo.devices import user_cache_dir
from lienzo.errors import InvalidArgumentError
from lienzo.io.checkpoints import staged_output
from lienzo.io.model_hash import model_identity
from lienzo.pipelines.pipeline import Pipeline, load
from lienzo.training.prior_preservation import ClassImages

KEY_DIGITS = 16
CLASS_IMAGE_SUFFIX = ".png"
DEFAULT_CLASS_IMAGES = 100


@dataclass(frozen=True)
class PriorPreservation:
    """Prior preservation (DreamBooth's; kohya's regularisation images): the base model draws `count` class
    images from `prompts` (taken in turn; `steps` sampling steps, None: the model's), cached under `cache`
    (None: default_class_cache()), and their loss is added at `weight`. No prompts or weight 0: off."""

    prompts: tuple[str, ...] = ()
    count: int = DEFAULT_CLASS_IMAGES
    weight: float = 1.0
    cache: Path | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise InvalidArgumentError(f"--prior-loss-weight must be 0 or more, got {self.weight}")

    @property
    def active(self) -> bool:
        """Whether class images are drawn and trained on."""
        return bool(self.prompts) and self.weight > 0


def default_class_cache() -> Path:
    """`$XDG_CACHE_HOME/lienzo/class-images` (~/.cache/lienzo/class-images when unset)."""
    return user_cache_dir("class-images")


def class_image_key(
    identity: str, prompts: Sequence[str], count: int, size: int, steps: int | None = None
) -> str:
    """The cache folder's name: a hash of the model identity, the class prompts, the count, the size and
    the sampling steps (None: the model's default)."""
    text = "\n".join([identity, *prompts, f"count={count}", f"size={size}", f"steps={steps}"])
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_DIGITS]


def class_image_folder(
    identity: str, prompts: Sequence[str], count: int, size: int, cache: Path, steps: int | None = None
) -> Path:
    """Where the class images of these settings are cached (the prompts and count checked first)."""
    if count < 1:
        raise InvalidArgumentError(f"--class-images must be at least 1 with a class prompt, got {count}")
    if not prompts or not all(prompt.strip() for prompt in prompts):
        raise InvalidArgumentError("a class prompt is empty; give --class-prompt a description of the class")
    return cache / class_image_key(identity, prompts, count, size, steps)


def is_complete(folder: Path, count: int) -> bool:
    """Whether `folder` holds all `count` class images."""
    return folder.is_dir() and len(list(folder.glob(f"*{CLASS_IMAGE_SUFFIX}"))) == count


def wait_for_class_images(folder: Path, count: int, poll_seconds: float = 2.0) -> Path:
    """Wait until another process (rank 0 under torchrun) has put the complete folder in place."""
    while not is_complete(folder, count):
        time.sleep(poll_seconds)
    return folder


def class_prompt_for(prompts: Sequence[str], index: int) -> str:
    """Class image `index` takes the prompts in turn."""
    return prompts[index % len(prompts)]


def class_images(
    pipe: Pipeline,
    identity: str,
    prompts: Sequence[str],
    count: int,
    size: int,
    cache: Path,
    *,
    steps: int | None = None,
    progress: bool = True,
) -> Path:
    """The folder of `count` class images (`00000.png` with its prompt in `00000.txt`), image i drawn from
    prompt i mod len(prompts) with seed i at the model's default settings (`steps` sampling steps when
    given); an existing complete folder for the same key is reused, a new one appears only complete
    (staged, then renamed)."""
    folder = class_image_folder(identity, prompts, count, size, cache, steps)
    if is_complete(folder, count):
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    with staged_output(folder) as staged:
        staged.mkdir()
        for index in tqdm(range(count), desc="class images", disable=not progress, unit="img"):
            prompt = class_prompt_for(prompts, index)
            image = pipe.generate(prompt, width=size, height=size, seed=index, steps=steps, progress=False)[0]
            image.save(staged / f"{index:05d}{CLASS_IMAGE_SUFFIX}")
            (staged / f"{index:05d}.txt").write_text(prompt + "\n", encoding="utf-8")
    return folder


def draw_class_images(
    pipe: Pipeline, prior: PriorPreservation, size: int, progress: bool
) -> ClassImages | None:
    """The class images for `pipe`'s model at `size` pixels with the prior's weight (None when `prior` is
    off): drawn by the model loaded afresh in its default generation dtype (bf16 or fp16 where the device
    has it), as `lienzo generate` draws, or reused from the cache; under torchrun rank 0 draws and the other
    ranks wait for the finished folder."""
    if not prior.active:
        return None
    identity = model_identity(pipe.path)
    cache = prior.cache or default_class_cache()
    if int(os.environ.get("RANK", "0")) != 0:
        expected = class_image_folder(identity, prior.prompts, prior.count, size, cache, prior.steps)
        return ClassImages(wait_for_class_images(expected, prior.count), prior.weight)
    drawer = load(pipe.path, device=pipe.device, family=pipe.family, cache=False)
    folder = class_images(
        drawer, identity, list(prior.prompts), prior.count, size, cache, steps=prior.steps, progress=progress
    )
    return ClassImages(folder, prior.weight)
