"""Read any supported model path into ModelFiles and write ModelFiles atomically in either layout."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from lienzo.errors import InvalidArgumentError, ModelNotFoundError
from lienzo.io.detect import MODEL_FOLDER_HINT
from lienzo.io.diffusers_folder import read_diffusers_folder, write_diffusers_folder
from lienzo.io.formats import CHECKPOINT_SUFFIXES
from lienzo.io.model_files import ModelFiles
from lienzo.io.single_file import read_single_file, write_single_file
from lienzo.models.specs import family_spec

FORMATS = ("diffusers", "single-file")
SINGLE_FILE_SUFFIX = ".safetensors"


def read_model(path: str | os.PathLike, *, family: str | None = None) -> ModelFiles:
    """Read a diffusers folder or a single-file checkpoint; `family` overrides detection (e.g. "sd2-v")."""
    path = Path(path)
    if family is not None:
        family_spec(family)
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist; check the path or download the model first")
    if path.is_dir():
        return read_diffusers_folder(path, family=family)
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ModelNotFoundError(f"{path} is not a model: {MODEL_FOLDER_HINT}")
    return read_single_file(path, family=family)


def format_for_path(path: str | os.PathLike) -> str:
    """The output format a destination implies: `.safetensors` is a single file, anything else a folder."""
    return "single-file" if Path(path).suffix.lower() == SINGLE_FILE_SUFFIX else "diffusers"


def write_model(
    files: ModelFiles,
    dst: str | os.PathLike,
    *,
    format: str | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model as a diffusers folder or one `.safetensors` file; all or nothing, never partial."""
    dst = Path(dst)
    format = format or format_for_path(dst)
    if format not in FORMATS:
        raise InvalidArgumentError(f"unknown model format {format!r}; use one of {', '.join(FORMATS)}")
    if format == "single-file" and dst.suffix.lower() != SINGLE_FILE_SUFFIX:
        raise InvalidArgumentError(
            f"a single-file model is written as .safetensors; name it {dst.stem}.safetensors"
        )
    if dst.exists() and not overwrite:
        raise InvalidArgumentError(f"{dst} already exists; choose another destination or allow overwriting")
    if not dst.parent.is_dir():
        raise ModelNotFoundError(f"the folder {dst.parent} does not exist; create it first")
    with staged_output(dst) as staged:
        if format == "single-file":
            write_single_file(files, staged, dtype=dtype)
        else:
            write_diffusers_folder(files, staged, dtype=dtype)
    return dst


@contextlib.contextmanager
def staged_output(dst: Path) -> Iterator[Path]:
    """A fresh path beside `dst` to write a file or folder to; when the block succeeds it takes `dst`'s
    place (an existing `dst` is swapped out only then), and whatever the block leaves is removed."""
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        staged = staging / dst.name
        yield staged
        _replace(staged, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(staged: Path, dst: Path) -> None:
    """Move a finished output into place, swapping out an existing one only after the new one is complete."""
    if not dst.exists():
        os.replace(staged, dst)
        return
    retired = staged.with_name(staged.name + ".old")
    os.replace(dst, retired)
    os.replace(staged, dst)
    if retired.is_dir():
        shutil.rmtree(retired)
    else:
        retired.unlink()
