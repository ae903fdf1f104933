"""Output files: names that never overwrite (`00001-<seed>.png`, next free number) and atomic writes."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lienzo.errors import InvalidArgumentError
from lienzo.io.atomic import atomic_path

DEFAULT_FOLDER = Path("outputs")
IMAGE_SUFFIXES = (".png",)
NUMBERED_NAME = re.compile(r"^(\d+)-")


def is_file_target(target: Path) -> bool:
    """True when an output target names a file (it ends in .png), False for a folder."""
    return target.suffix.lower() in IMAGE_SUFFIXES and not target.is_dir()


def output_folder(target: Path) -> Path:
    """The folder an output target writes into: the target itself, or a .png file's parent."""
    return target.parent if is_file_target(target) else target


def nearest_existing(path: Path) -> Path:
    """`path` when it exists, else its closest ancestor that does."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(folder: Path, option: str = "-o") -> None:
    """Raise InvalidArgumentError unless `folder` (or the folder to make it in) takes files; makes nothing."""
    existing = nearest_existing(Path(folder))
    if not existing.is_dir():
        reason = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"{existing} is not writable"
    else:
        return
    raise InvalidArgumentError(f"cannot write to {folder} ({reason}); choose a writable path with {option}")


def prepare_target(target: Path | None) -> Path:
    """The output target, checked before any work: its folder must be writable or creatable (not made yet)."""
    target = DEFAULT_FOLDER if target is None else Path(target)
    if target.suffix and not is_file_target(target) and not target.is_dir():
        raise InvalidArgumentError(
            f"cannot write {target}: images are saved as PNG; name a .png file or a folder with -o"
        )
    check_writable_folder(output_folder(target))
    return target


def next_number(folder: Path) -> int:
    """One more than the highest `NNNNN-` prefix among the folder's files (1 in an empty folder)."""
    numbers = [int(match.group(1)) for path in folder.iterdir() if (match := NUMBERED_NAME.match(path.name))]
    return max(numbers, default=0) + 1


def proposed_path(target: Path, counter: int, seed: int) -> Path:
    """The `counter`-th name to try: `NNNNN-<seed>.png` in a folder, or `stem.png`, `stem-1.png`, ..."""
    if is_file_target(target):
        return target if counter == 0 else target.with_name(f"{target.stem}-{counter}{target.suffix}")
    return target / f"{counter:05d}-{seed}.png"


def create_exclusively(path: Path) -> bool:
    """Create an empty file at `path`; False when something already exists there."""
    try:
        with open(path, "x"):
            return True
    except FileExistsError:
        return False


def reserve_paths(target: Path, seeds: list[int]) -> list[Path]:
    """One new, empty file per seed, made exclusively so no file is ever replaced; makes the folder."""
    reserved: list[Path] = []
    try:
        output_folder(target).mkdir(parents=True, exist_ok=True)
        counter = 0 if is_file_target(target) else next_number(target)
        for seed in seeds:
            while not create_exclusively(path := proposed_path(target, counter, seed)):
                counter += 1
            counter += 1
            reserved.append(path)
    except OSError as error:
        release_paths(reserved)
        raise InvalidArgumentError(
            f"cannot create a file in {target} ({error.strerror or error}); choose a writable path with -o"
        ) from error
    return reserved


def release_paths(paths: list[Path]) -> None:
    """Remove reserved files that were never written (empty), leaving nothing partial behind."""
    for path in paths:
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                path.unlink()


def write_png_atomically(image: Image.Image, path: Path, pnginfo: PngInfo | None = None) -> Path:
    """Save `image` as PNG through a temporary file in the same folder and `os.replace`, so readers
    never see a half-written file."""
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG", pnginfo=pnginfo)
    return Path(path)
