"""Tensor file formats: safetensors and weights-only pickle checkpoints, read safely, written atomically."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lienzo.errors import (
    CorruptCheckpointError,
    InvalidArgumentError,
    ModelNotFoundError,
    UnsafeCheckpointError,
)
from lienzo.io.atomic import atomic_path

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
PICKLE_PROTOCOL_OPCODE = 0x80


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor in a `.safetensors` file or a weights-only `.ckpt`/`.pt`/`.pth`/`.bin` checkpoint."""
    path = _existing_file(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle_checkpoint(path)
    raise InvalidArgumentError(
        f"{path} has an unsupported extension {suffix!r}; use a checkpoint ending in "
        f"{', '.join(CHECKPOINT_SUFFIXES)}"
    )


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a `.safetensors` header (empty when it has none)."""
    path = _existing_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:
        raise _damaged(path, error) from None


def write_safetensors(
    path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a `.safetensors` file via a temporary sibling and `os.replace`, never leaving a partial file."""
    path = Path(path)
    tensors = {key: tensor.detach().contiguous().cpu() for key, tensor in state_dict.items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=dict(metadata) if metadata else None)


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist; check the path or download the model first")
    if not path.is_file():
        raise InvalidArgumentError(f"{path} is not a file; give the path of a checkpoint file")
    return path


def _damaged(path: Path, error: Exception) -> CorruptCheckpointError:
    text = str(error).strip()
    reason = text.splitlines()[0].split(". ")[0] if text else type(error).__name__
    return CorruptCheckpointError(
        f"{path} is damaged or not a valid checkpoint ({reason}); re-download or re-export the file"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except Exception as error:
        raise _damaged(path, error) from None
    return tensors


def read_weights_only_pickle(path: str | os.PathLike) -> object:
    """A torch pickle's contents through `torch.load(weights_only=True)` (tensors, numbers, strings and
    containers only): one that needs any class or function to load is refused, never run."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if _needs_code_to_load(path, error):
            refused = re.search(r"GLOBAL ([\w.]+)", str(error))
            what = f"asks for {refused.group(1)}" if refused else "needs arbitrary classes or functions"
            raise UnsafeCheckpointError(
                f"{path} was refused: its pickle {what}, and loading it could run code. If you trust it, "
                "convert it to .safetensors in an isolated environment (a throwaway container or VM, with "
                "torch.load(weights_only=False) and safetensors' save_file), then load the .safetensors file"
            ) from None
        raise _damaged(path, ValueError("not a readable weights-only pickle")) from None
    except Exception as error:
        raise _damaged(path, error) from None


def _read_pickle_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    loaded = read_weights_only_pickle(path)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise CorruptCheckpointError(
            f"{path} holds a {type(loaded).__name__}, not a state dict of tensors; "
            "re-export it as a state dict"
        )
    return {str(key): value for key, value in loaded.items() if isinstance(value, torch.Tensor)}


def _needs_code_to_load(path: Path, error: pickle.UnpicklingError) -> bool:
    """A refused global, or a plain pickle stream the weights-only reader cannot follow."""
    if "GLOBAL" in str(error):
        return True
    if zipfile.is_zipfile(path):
        return False
    with open(path, "rb") as handle:
        return handle.read(1) == bytes([PICKLE_PROTOCOL_OPCODE])


HASH_CHUNK_BYTES = 1 << 24


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, in hex: what A1111's model, LoRA, embedding and hypernetwork hashes cut."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
