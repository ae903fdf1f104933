"""Files the API reads and writes: every name is resolved inside its folder (no `..`, no absolute path,
no escape through a symlink), and uploads are verified to be images before they are stored."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from lienzo.errors import InvalidArgumentError
from lienzo.io.atomic import atomic_path

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_IMAGE_PIXELS = 8192 * 8192
"""Uploads above this many pixels are refused before decoding (decompression-bomb limit)."""
FOLDER_TYPES = ("input", "output", "temp")


class ForbiddenPathError(InvalidArgumentError):
    """A file name that would leave its folder."""


def folder_for(folders: dict[str, Path], kind: str) -> Path:
    """The folder of a ComfyUI file type (input, output or temp)."""
    if kind not in folders:
        raise InvalidArgumentError(f"unknown file type {kind!r}; use one of: {', '.join(FOLDER_TYPES)}")
    return folders[kind]


def split_annotation(filename: str, default: str) -> tuple[str, str]:
    """ComfyUI's annotated names: "x.png [input]" -> ("x.png", "input")."""
    for kind in FOLDER_TYPES:
        suffix = f" [{kind}]"
        if filename.endswith(suffix):
            return filename[: -len(suffix)], kind
    return filename, default


def safe_join(folder: Path, subfolder: str, filename: str = "") -> Path:
    """`folder/subfolder/filename`, refusing absolute parts, `..`, NUL and anything that resolves
    (symlinks followed) outside `folder`."""
    for part in (subfolder, filename):
        if "\0" in part or "\\" in part or PurePosixPath(part).is_absolute() or os.path.isabs(part):
            raise ForbiddenPathError(f"the path {part!r} is not allowed; give a name inside the folder")
        if ".." in PurePosixPath(part).parts:
            raise ForbiddenPathError(f"the path {part!r} leaves its folder; `..` is not allowed")
    if "/" in filename:
        raise ForbiddenPathError(f"the file name {filename!r} must not hold '/'; use subfolder")
    root = folder.resolve()
    path = (root / subfolder / filename) if filename else (root / subfolder)
    if not path.resolve().is_relative_to(root):
        raise ForbiddenPathError(f"the path {subfolder}/{filename} leads outside its folder; refused")
    return path


def check_image(data: bytes) -> Image.Image:
    """The decoded image of uploaded bytes: a PNG, JPEG or WebP within MAX_IMAGE_PIXELS, or
    InvalidArgumentError."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            kind, size = probe.format, probe.size
            probe.verify()
        if kind not in IMAGE_FORMATS:
            raise InvalidArgumentError(f"uploads must be {', '.join(IMAGE_FORMATS)} images, got {kind}")
        if size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise InvalidArgumentError(
                f"the image is {size[0]}x{size[1]}, over the {MAX_IMAGE_PIXELS} pixel limit; resize it"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
        return image
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as error:
        raise InvalidArgumentError(
            f"the upload is not a readable image ({error}); send a PNG, JPEG or WebP"
        ) from None


def store_upload(folder: Path, subfolder: str, filename: str, data: bytes, overwrite: bool) -> str:
    """Write verified image bytes as `folder/subfolder/filename` and return the name used: an existing
    file with other contents keeps its name and the upload becomes "name (i).ext" (ComfyUI's rule)."""
    if not filename or filename in (".", "..") or "/" in filename or "\\" in filename:
        raise ForbiddenPathError(f"the file name {filename!r} is not allowed; send a plain file name")
    name = filename
    target = safe_join(folder, subfolder, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix = os.path.splitext(name)
    counter = 1
    while target.exists() and not overwrite:
        if target.is_file() and _digest(target.read_bytes()) == _digest(data):
            return target.name
        target = safe_join(folder, subfolder, f"{stem} ({counter}){suffix}")
        counter += 1
    with atomic_path(target) as temporary:
        temporary.write_bytes(data)
    return target.name


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
