"""Where a graph run reads and writes: the model library and the input, output and temp folders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lienzo.errors import InvalidArgumentError
from lienzo.io.library import ModelLibrary

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
"""Files LoadImage lists in the input folder."""


@dataclass(frozen=True)
class GraphEnvironment:
    """The model library (every model name resolves through it), the folders nodes read and write, and
    how samplers draw their previews (lienzo.graph.previews: latent2rgb, taesd, auto or none)."""

    library: ModelLibrary
    input_dir: Path
    output_dir: Path
    temp_dir: Path
    preview_method: str = "latent2rgb"

    def folder(self, kind: str) -> Path:
        """The folder of an image type: "input", "output" or "temp" (ComfyUI's `type` field)."""
        folders = {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}
        if kind not in folders:
            raise InvalidArgumentError(f"unknown folder type {kind!r}; use input, output or temp")
        return Path(folders[kind])

    def input_files(self) -> list[str]:
        """Image files in the input folder (sub-folders included) as POSIX relative names, sorted."""
        root = Path(self.input_dir)
        if not root.is_dir():
            return []
        names = []
        for path in root.rglob("*"):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and inside(path, root):
                names.append(path.relative_to(root).as_posix())
        return sorted(names)


def inside(path: Path, folder: Path) -> bool:
    """True when `path`, symlinks resolved, lies inside `folder` (also resolved)."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def safe_relative(name: str, what: str) -> PurePosixPath:
    """A relative POSIX name with no `..`, no absolute root and no drive; anything else is refused."""
    text = str(name).replace("\\", "/")
    relative = PurePosixPath(text)
    if not text or relative.is_absolute() or ".." in relative.parts or ":" in relative.parts[0]:
        raise InvalidArgumentError(f"{what} {name!r} must be a name inside its folder, without '..'")
    return relative


def resolve_inside(folder: Path, name: str, what: str) -> Path:
    """`folder / name` after checking the name (`safe_relative`) and that no symlink leads outside."""
    path = Path(folder) / safe_relative(name, what)
    if not inside(path, folder):
        raise InvalidArgumentError(f"{what} {name!r} leads outside {folder}; use a file inside it")
    return path
