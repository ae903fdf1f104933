"""Textual-inversion embedding files: A1111 `.pt`, old ParameterDict `.pt`, kohya and diffusers files, SDXL.

Layouts read (see docs/adapters.md, "Textual inversion"):

- A1111 `.pt`: `{"string_to_param": {"*": (n, width)}, "string_to_token", "name", "step", ...}`; in older
  (rinongal-style) files `string_to_param` is a pickled `nn.ParameterDict`;
- kohya `.safetensors`: `{"emb_params": (n, width)}`;
- diffusers `learned_embeds.{bin,safetensors}`: `{token: (width,) or (n, width)}`, exactly one key;
- SDXL: `{"clip_l": (n, 768), "clip_g": (n, 1280)}`.

Pickles are never unpickled with code: `torch.load(weights_only=True)` first; a zip archive it refuses (an
old file holding a ParameterDict) is read by a restricted unpickler that turns the ParameterDict into a plain
dict of tensors and refuses every other class or function.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from lienzo.errors import (
    CorruptCheckpointError,
    InvalidArgumentError,
    LienzoError,
    ModelNotFoundError,
    UnsafeCheckpointError,
)
from lienzo.io.formats import file_sha256, write_safetensors
from lienzo.io.library import is_training_run
from lienzo.text.embeddings import Embeddings, EmbeddingVectors

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth", ".ckpt")
SDXL_KEYS = ("clip_l", "clip_g")
FLAT_PREFIX = "string_to_param."
SHORT_HASH_DIGITS = 12
LAYOUTS_HINT = (
    "an embedding holds string_to_param (A1111), emb_params (kohya), clip_l/clip_g (SDXL) or exactly one "
    "tensor (diffusers learned_embeds)"
)


def read_embedding_file(path: str | os.PathLike) -> EmbeddingVectors:
    """The vectors of one embedding file, with the file as `source` and A1111's short hash."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path} does not exist; check the path of the embedding file")
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise InvalidArgumentError(
            f"{path} is not an embedding file; use one ending in {', '.join(EMBEDDING_SUFFIXES)} "
            "(PNG/WebP embeddings are not supported)"
        )
    data = _read_safetensors(path) if suffix == ".safetensors" else _read_pickle(path)
    return embedding_vectors(data, str(path), short_hash=file_sha256(path)[:SHORT_HASH_DIGITS])


def embedding_vectors(data: object, source: str, *, short_hash: str | None = None) -> EmbeddingVectors:
    """The embedding in loaded file contents (any layout above; `string_to_param.<key>` flattened keys too,
    as in embeddings bundled in a LoRA file under `bundle_emb.<name>.`); `source` names it in errors."""
    tensors = _embedding_tensors(data, source)
    try:
        return EmbeddingVectors.of(*tensors, source=source, short_hash=short_hash)
    except InvalidArgumentError:
        raise
    except Exception as error:
        raise CorruptCheckpointError(f"{source} holds unusable embedding vectors ({error})") from None


def load_embeddings(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Embeddings:
    """Embeddings from files and folders (searched recursively for embedding files, training run folders
    left out), named by file stem.

    Two files with the same stem are an error (rename one: the stem is the word that triggers it).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(
                found
                for found in path.rglob("*")
                if found.is_file()
                and found.suffix.lower() in EMBEDDING_SUFFIXES
                and not found.name.startswith(".")
                and not any(is_training_run(parent) for parent in found.parents if path in parent.parents)
            )
        else:
            files.append(path)
    entries: dict[str, EmbeddingVectors] = {}
    for file in files:
        if file.stem in entries:
            raise InvalidArgumentError(
                f"two embeddings are named {file.stem!r}: {entries[file.stem].source} and {file}; rename one "
                "(its file name is the word that triggers it)"
            )
        entries[file.stem] = read_embedding_file(file)
    return Embeddings(entries)


def write_embedding_file(path: str | os.PathLike, embedding: EmbeddingVectors) -> Path:
    """Write an embedding as `.safetensors`: kohya's `emb_params`, or SDXL's `clip_l`/`clip_g` for two towers
    (both read by A1111, ComfyUI and lienzo)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise InvalidArgumentError(f"embeddings are written as .safetensors; name it {path.stem}.safetensors")
    if len(embedding.vectors) == 1:
        tensors = {"emb_params": embedding.vectors[0]}
    elif len(embedding.vectors) == 2:
        tensors = dict(zip(SDXL_KEYS, embedding.vectors, strict=True))
    else:
        raise InvalidArgumentError(f"no embedding file layout holds {len(embedding.vectors)} towers' vectors")
    write_safetensors(path, tensors)
    return path


def _embedding_tensors(data: object, path: str) -> list[torch.Tensor]:
    """The (n, width) or (width,) tensors of a loaded embedding file, one per text tower."""
    if not isinstance(data, Mapping):
        raise InvalidArgumentError(f"{path} holds a {type(data).__name__}, not an embedding; {LAYOUTS_HINT}")
    flattened = {
        key[len(FLAT_PREFIX) :]: value for key, value in data.items() if str(key).startswith(FLAT_PREFIX)
    }
    if flattened:
        data = flattened if any(key in flattened for key in SDXL_KEYS) else {"string_to_param": flattened}
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            raise InvalidArgumentError(
                f"{path}: string_to_param should hold exactly one tensor; {LAYOUTS_HINT}"
            )
        values = list(params.values())
    elif "emb_params" in data:
        values = [data["emb_params"]]
    elif any(key in data for key in SDXL_KEYS):
        values = [data[key] for key in SDXL_KEYS if key in data]
    elif len(data) == 1:
        values = list(data.values())
    else:
        keys = ", ".join(sorted(map(str, data))[:8])
        raise InvalidArgumentError(
            f"{path} is not a textual-inversion embedding (keys: {keys}); {LAYOUTS_HINT}"
        )
    for value in values:
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise InvalidArgumentError(f"{path}: embedding vectors should be a float tensor; {LAYOUTS_HINT}")
    return values


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise _damaged(path, error) from None


def _read_pickle(path: Path) -> object:
    """A weights-only pickle; an old ParameterDict file through the restricted reader."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if zipfile.is_zipfile(path):
            return read_restricted_zip(path)
        refused = re.search(r"GLOBAL ([\w.]+)", str(error))
        if refused:
            raise _refused(path, refused.group(1)) from None
        raise _damaged(path, error) from None
    except Exception as error:
        raise _damaged(path, error) from None


def _damaged(path: Path, error: Exception) -> CorruptCheckpointError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return CorruptCheckpointError(f"{path} is damaged or not an embedding file ({reason}); re-download it")


def _refused(path: Path, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path} was refused: its pickle asks for {what}, and loading it could run code. Embedding files "
        "hold only tensors; get a .safetensors version of it"
    )


# The restricted reader: a torch zip archive (`<name>/data.pkl` + `<name>/data/<key>` storages) whose pickle
# may name only these globals, each mapped to plain data.

STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class ModuleState:
    """What a pickled `nn.ParameterDict` becomes here: its attribute dict, with no module code run."""

    def __init__(self) -> None:
        self.state: dict = {}

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a ParameterDict's state is not a dict")
        self.state = state

    def parameters(self) -> dict:
        parameters = self.state.get("_parameters")
        if not isinstance(parameters, Mapping):
            raise pickle.UnpicklingError("a ParameterDict without _parameters")
        return dict(parameters)


class StorageType:
    """A `torch.<Dtype>Storage` name in a pickle: only its dtype is used."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *_):
    if not isinstance(storage, torch.Tensor) or storage.ndim != 1:
        raise pickle.UnpicklingError("a tensor without its storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(storage_offset)).clone()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter without a tensor")
    return data


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.nn.modules.container", "ParameterDict"): ModuleState,
    **{("torch", name): StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only ALLOWED_GLOBALS; storages come from the archive's `data/` entries."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise _refused(self.path, f"{module}.{name}")
        return allowed

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, storage_type, key, _, numel = pid
        if not isinstance(storage_type, StorageType):
            raise pickle.UnpicklingError("a storage of unknown type")
        key = str(key)
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            element = torch.empty((), dtype=storage_type.dtype).element_size()
            if len(raw) != int(numel) * element:
                raise pickle.UnpicklingError(
                    f"storage {key} has {len(raw)} bytes, expected {numel * element}"
                )
            flat = (
                torch.frombuffer(raw, dtype=storage_type.dtype)
                if raw
                else torch.empty(0, dtype=storage_type.dtype)
            )
            self.storages[key] = flat
        return self.storages[key]


def read_restricted_zip(path: str | os.PathLike) -> object:
    """The data of a torch zip archive whose pickle names only ALLOWED_GLOBALS (ParameterDicts as dicts)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [
                name for name in archive.namelist() if name.endswith("data.pkl") and name.count("/") == 1
            ]
            if len(pickles) != 1:
                raise pickle.UnpicklingError("no single data.pkl in the archive")
            prefix = pickles[0][: -len("data.pkl")]
            if prefix + "byteorder" in archive.namelist():
                if archive.read(prefix + "byteorder").decode().strip() != "little":
                    raise pickle.UnpicklingError("a big-endian archive")
            data = RestrictedUnpickler(archive, prefix, path).load()
            return _plain(data)
    except LienzoError:
        raise
    except Exception as error:
        raise _damaged(path, error) from None


def _plain(value: object) -> object:
    """Loaded data with every ModuleState replaced by its parameters dict."""
    if isinstance(value, ModuleState):
        return {key: _plain(item) for key, item in value.parameters().items()}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value
