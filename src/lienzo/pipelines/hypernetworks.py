"""A1111 hypernetworks on a Pipeline: read once, built on the model's device and dtype, hooked into its UNet.

A file is read and built once per device and dtype and kept (the last HYPERNETWORK_CACHE_SIZE files), so
changing a strength or switching hypernetworks between generations never reads the file again. Each
applied hypernetwork is one key of the Pipeline's UNet patcher (`hypernet:<key>`): hooks on the attention
layers of the Pipeline's own UNet view whose key/value source has one of the file's widths, chained in the
order they were added (lienzo.adapters.hypernetwork).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lienzo.adapters.hypernetwork import Hypernetwork, attention_hooks, attention_widths, hypernetwork_module
from lienzo.errors import InvalidArgumentError
from lienzo.io.formats import file_sha256
from lienzo.io.hypernetwork_files import HypernetworkFile, read_hypernetwork_file
from lienzo.text.network_tags import extract_hypernet_tags

HYPERNETWORK_CACHE_SIZE = 8
SHORT_HASH_DIGITS = 10
"""A1111's hypernetwork short hash (`Hypernetwork.shorthash`): the first 10 hex digits of the sha256."""
PATCHER_PREFIX = "hypernet:"
"""Hypernetwork keys in the UNet patcher carry this prefix, apart from the LoRA keys."""


@dataclass(frozen=True)
class LoadedHypernetwork:
    """A hypernetwork file built on one device and dtype, with its short hash."""

    name: str
    path: Path
    short_hash: str
    network: Hypernetwork


def build_hypernetwork(contents: HypernetworkFile) -> Hypernetwork:
    """The (k, v) networks of a file's contents, in float32 on the CPU."""
    return Hypernetwork(
        {
            width: tuple(
                hypernetwork_module(
                    mlp.linears,
                    mlp.norms,
                    mlp.activated,
                    contents.activation,
                    mlp.activation_weights,
                    source=contents.source,
                )
                for mlp in pair
            )
            for width, pair in contents.layers.items()
        }
    )


_LOADED: OrderedDict[tuple, LoadedHypernetwork] = OrderedDict()
"""Built files by (path, size, modification time, device, dtype), least recently used first."""


def load_hypernetwork(path: Path, device: torch.device, dtype: torch.dtype) -> LoadedHypernetwork:
    """The file built on `device` in `dtype`, read only when it is not cached or has changed."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(device), str(dtype))
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    network = build_hypernetwork(read_hypernetwork_file(path)).to(device=device, dtype=dtype)
    loaded = LoadedHypernetwork(path.stem, path, file_sha256(path)[:SHORT_HASH_DIGITS], network)
    _LOADED[key] = loaded
    while len(_LOADED) > HYPERNETWORK_CACHE_SIZE:
        _LOADED.popitem(last=False)
    return loaded


class HypernetworkSet:
    """The hypernetworks applied to one Pipeline's UNet, by key, each with a strength (A1111's multiplier).

    `add` takes a path or a name from the model library's `hypernetworks/`; `set_strength` and `remove`
    change what is applied without reading any file; `from_prompt` applies a prompt's `<hypernet:…>` tags
    for the length of one generation, after the hypernetworks added here.
    """

    def __init__(self, pipe):
        self.pipe = pipe
        self.applied: dict[str, tuple[LoadedHypernetwork, float]] = {}

    def resolve_path(self, hypernetwork: str | Path) -> Path:
        """The file of a hypernetwork given as a path or as a name in the Pipeline's library's
        hypernetworks folders."""
        return self.pipe.model_library().resolve("hypernetworks", hypernetwork)

    def add(self, hypernetwork: str | Path, strength: float = 1.0, *, key: str | None = None) -> str:
        """Apply a hypernetwork file at `strength`, after those already applied; returns its key
        (default: the file's stem). A key already applied is replaced in its place in the chain."""
        loaded = load_hypernetwork(self.resolve_path(hypernetwork), self.pipe.device, self.pipe.dtype)
        key = key or loaded.name
        if not attention_hooks(self.pipe.unet, loaded.network):
            widths = ", ".join(map(str, loaded.network.widths))
            model_widths = ", ".join(map(str, attention_widths(self.pipe.unet)))
            raise InvalidArgumentError(
                f"{loaded.path.name} has networks for widths {widths}, but this model's attention layers "
                f"read widths {model_widths}; is it made for another model family?"
            )
        self.applied[key] = (loaded, float(strength))
        self._hook(key)
        return key

    def set_strength(self, key: str, strength: float) -> None:
        """Change an applied hypernetwork's multiplier (no file read)."""
        loaded, _ = self._applied(key)
        self.applied[key] = (loaded, float(strength))
        self._hook(key)

    def remove(self, *keys: str) -> None:
        """Take hypernetworks out; the attention layers they hooked run as before."""
        for key in keys:
            self._applied(key)
            del self.applied[key]
            self.pipe.unet_patcher.remove(PATCHER_PREFIX + key)

    @property
    def strengths(self) -> dict[str, float]:
        """The strength of each applied hypernetwork by key, in chain order."""
        return {key: strength for key, (_, strength) in self.applied.items()}

    def hashes(self) -> dict[str, str]:
        """Each applied file's name and A1111 short hash (10 hex digits)."""
        return {loaded.name: loaded.short_hash for loaded, _ in self.applied.values()}

    @contextlib.contextmanager
    def from_prompt(self, prompt: str) -> Iterator[None]:
        """Apply the prompt's `<hypernet:name:m>` tags, in order, while the block runs; then take them out."""
        _, tags = extract_hypernet_tags(prompt)
        keys = []
        try:
            for index, tag in enumerate(tags):
                keys.append(self.add(tag.name, tag.strength, key=f"prompt:{index}:{tag.name}"))
            yield
        finally:
            self.remove(*keys)

    def _applied(self, key: str) -> tuple[LoadedHypernetwork, float]:
        if key not in self.applied:
            applied = ", ".join(self.applied) or "none"
            raise InvalidArgumentError(f"no hypernetwork {key!r} is applied; applied: {applied}")
        return self.applied[key]

    def _hook(self, key: str) -> None:
        loaded, strength = self.applied[key]
        hooks = attention_hooks(self.pipe.unet, loaded.network, strength)
        self.pipe.unet_patcher.add_hooks(PATCHER_PREFIX + key, hooks)
