"""LoRA and LyCORIS files on a Pipeline: read once, resolved onto the model's weights, patched through its
patchers.

A file is read and resolved once per model family and kept (the last LORA_CACHE_SIZE files), so changing
a LoRA's strength, or switching LoRAs between generations, never reads the file again. Each resolved
module becomes `WeightPatch`es whose deltas come from `lienzo.adapters.algorithms`, the one place every
algorithm's formula lives.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lienzo.adapters import WeightPatch
from lienzo.adapters.algorithms import module_patches
from lienzo.errors import InvalidArgumentError
from lienzo.io.adapter_files import parameter_shapes, read_adapter_file, resolve_targets
from lienzo.io.adapter_keys import UNET
from lienzo.io.embedding_files import embedding_vectors
from lienzo.io.formats import file_sha256
from lienzo.io.library import BUILTIN_MODELS
from lienzo.text.embeddings import Embeddings
from lienzo.text.network_tags import extract_lora_tags

LORA_CACHE_SIZE = 8
SHORT_HASH_DIGITS = 12
"""A1111's "Lora hashes" use the first 12 hex digits of the file's sha256."""


@dataclass(frozen=True)
class LoadedLora:
    """A LoRA file resolved onto one model family: its patches per network, its short hash, the
    textual-inversion embeddings bundled in it (kohya's `bundle_emb.<name>.*`) and the model it was trained
    on (kohya's `ss_sd_model_name`, when the header has it)."""

    name: str
    path: Path
    short_hash: str
    unet: tuple[WeightPatch, ...]
    texts: tuple[tuple[WeightPatch, ...], ...]
    embeddings: Embeddings = Embeddings()
    trained_on: str | None = None


class ModelMismatchWarning(UserWarning):
    """A LoRA trained on one built-in model is applied to another built-in model."""


def warn_if_made_for_another_builtin(loaded: LoadedLora, model_name: str | None) -> None:
    """Warn when `loaded` was trained on one built-in model and is applied to another: the built-ins
    share layer shapes, so the file applies, but their latents differ and it draws nothing it learned."""
    builtins = {name for name, _ in BUILTIN_MODELS["checkpoints"]}
    if loaded.trained_on in builtins and model_name in builtins and loaded.trained_on != model_name:
        warnings.warn(
            f"the LoRA {loaded.name} was trained on the built-in {loaded.trained_on}, not on {model_name}: "
            f"it will not draw what it learned there; use --model {loaded.trained_on}",
            ModelMismatchWarning,
            stacklevel=4,
        )


def resolve_lora(pipe, path: Path) -> LoadedLora:
    """Read a LoRA/LyCORIS file and resolve it onto `pipe`'s networks (no caching)."""
    adapter = read_adapter_file(path)
    text_shapes = [parameter_shapes(encoder) for encoder in pipe.text_encoders]
    resolution = resolve_targets(adapter, pipe.spec, parameter_shapes(pipe.unet), text_shapes)
    unet = [
        patch
        for target in resolution.for_component(UNET)
        for patch in module_patches(target.parts, target.params, f"{path.name}: {target.key}")
    ]
    texts = [
        tuple(
            patch
            for target in resolution.for_component(("text", i))
            for patch in module_patches(target.parts, target.params, f"{path.name}: {target.key}")
        )
        for i in range(len(pipe.text_encoders))
    ]
    digest = file_sha256(path)[:SHORT_HASH_DIGITS]
    bundled = {
        name: embedding_vectors(parts, f"{path.name}: {name}", short_hash=digest)
        for name, parts in resolution.embeddings.items()
    }
    trained_on = adapter.metadata.get("ss_sd_model_name")
    return LoadedLora(path.stem, path, digest, tuple(unet), tuple(texts), Embeddings(bundled), trained_on)


_LOADED: OrderedDict[tuple, LoadedLora] = OrderedDict()
"""Resolved files by (path, size, modification time, family spec), least recently used first."""


def load_lora(pipe, path: Path) -> LoadedLora:
    """The file resolved onto `pipe`'s family, read only when it is not cached or has changed."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, pipe.spec)
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    loaded = resolve_lora(pipe, path)
    _LOADED[key] = loaded
    while len(_LOADED) > LORA_CACHE_SIZE:
        _LOADED.popitem(last=False)
    return loaded


class LoraSet:
    """The LoRAs applied to one Pipeline, by key, each with a UNet and a text-encoder strength.

    `add` takes a path or a name from the model library's `loras/`; `set_strength` and `remove` change
    what is applied without reading any file; `from_prompt` applies a prompt's `<lora:…>` tags for the
    length of one generation.
    """

    def __init__(self, pipe):
        self.pipe = pipe
        self.applied: dict[str, tuple[LoadedLora, float, float]] = {}

    def resolve_path(self, lora: str | Path) -> Path:
        """The file of a LoRA given as a path or as a name in the Pipeline's library's loras folders."""
        return self.pipe.model_library().resolve("loras", lora)

    def add(
        self,
        lora: str | Path,
        strength: float = 1.0,
        *,
        text_strength: float | None = None,
        key: str | None = None,
    ) -> str:
        """Apply a LoRA/LyCORIS file at `strength` on the UNet and `text_strength` (default: the same) on
        the text encoders, as ComfyUI's LoraLoader does; returns its key (default: the file's stem)."""
        return self.add_file(self.resolve_path(lora), strength, text_strength=text_strength, key=key)

    def add_file(
        self, path: Path, strength: float = 1.0, *, text_strength: float | None = None, key: str | None = None
    ) -> str:
        """`add` for a file already resolved (graph nodes resolve names in their own library first)."""
        loaded = load_lora(self.pipe, path)
        warn_if_made_for_another_builtin(loaded, self.pipe.name)
        key = key or loaded.name
        text = strength if text_strength is None else text_strength
        self.applied[key] = (loaded, float(strength), float(text))
        self._patch(key)
        return key

    def set_strength(self, key: str, strength: float, *, text_strength: float | None = None) -> None:
        """Change an applied LoRA's strengths (text default: the same as the UNet's)."""
        loaded, _, _ = self._applied(key)
        text = strength if text_strength is None else text_strength
        self.applied[key] = (loaded, float(strength), float(text))
        self._patch(key)

    def remove(self, *keys: str) -> None:
        """Take LoRAs out; the weights they changed get their original tensors back."""
        for key in keys:
            self._applied(key)
            del self.applied[key]
            for patcher in (self.pipe.unet_patcher, *self.pipe.text_patchers):
                patcher.remove(key)

    @property
    def strengths(self) -> dict[str, tuple[float, float]]:
        """(UNet strength, text-encoder strength) of each applied LoRA by key."""
        return {key: (unet, text) for key, (_, unet, text) in self.applied.items()}

    def embeddings(self) -> Embeddings:
        """The embeddings bundled in the applied LoRA files (a later file's name wins)."""
        bundled = {}
        for loaded, _, _ in self.applied.values():
            bundled.update(loaded.embeddings.entries)
        return Embeddings(bundled)

    def hashes(self) -> dict[str, str]:
        """A1111's "Lora hashes": each applied file's name and short hash."""
        return {loaded.name: loaded.short_hash for loaded, _, _ in self.applied.values()}

    @contextlib.contextmanager
    def from_prompt(self, prompt: str) -> Iterator[None]:
        """Apply the prompt's `<lora:name:te:unet>` tags while the block runs, then take them out again
        (a file tagged twice applies twice, each at its own strengths)."""
        _, tags = extract_lora_tags(prompt)
        keys = []
        try:
            for index, tag in enumerate(tags):
                key = f"prompt:{index}:{tag.name}"
                keys.append(self.add(tag.name, tag.unet_strength, text_strength=tag.text_strength, key=key))
            yield
        finally:
            self.remove(*keys)

    def _applied(self, key: str) -> tuple[LoadedLora, float, float]:
        if key not in self.applied:
            applied = ", ".join(self.applied) or "none"
            raise InvalidArgumentError(f"no LoRA {key!r} is applied; applied: {applied}")
        return self.applied[key]

    def _patch(self, key: str) -> None:
        loaded, unet, text = self.applied[key]
        patch_at(self.pipe.unet_patcher, key, loaded.unet, unet)
        for patcher, patches in zip(self.pipe.text_patchers, loaded.texts, strict=True):
            patch_at(patcher, key, patches, text)


def patch_at(patcher, key: str, patches, strength: float) -> None:
    """Apply a LoRA's patches to one network at `strength`; at 0 the network keeps its original weights,
    with no patched copies made (a graph's LoraLoader applies a file to only the UNet or the text encoders
    of each of its views)."""
    if strength:
        patcher.add(key, list(patches), strength)
    else:
        patcher.remove(key)
