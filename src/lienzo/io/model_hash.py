"""A model's identity for caches and records: the sha256 of its file, or of its folder's files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lienzo.io.formats import file_sha256

SHORT_HASH_DIGITS = 10
"""A1111's short model hash: the first 10 hex digits of the sha256 (what hypernetworks record)."""


def model_identity(path: str | os.PathLike) -> str:
    """The sha256 of a single-file model, or of a model folder's files (relative names and contents)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for item in sorted(file for file in path.rglob("*") if file.is_file()):
        digest.update(f"{item.relative_to(path).as_posix()}:{file_sha256(item)}\n".encode())
    return digest.hexdigest()
