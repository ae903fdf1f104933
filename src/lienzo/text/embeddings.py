"""Textual-inversion embeddings (Gal et al. 2022) in memory, and how prompts trigger them.

An embedding is a few learned token vectors per text tower, known by a name (A1111: the file stem). A prompt
triggers it in two ways, both weighted like any text:

- A1111: the name written as a word. The name's token ids are matched in the tokenized prompt (longest name
  first) and replaced by the embedding's n vectors, which take n token slots. A name that is one vocabulary
  word (e.g. `cat`) thereby overrides that word while the embedding is loaded.
- ComfyUI: `embedding:name` (a file extension or a folder in front of the name is ignored, trailing commas
  are not part of it). An unknown name is an error.

Each tower takes the vectors of its own width; a tower the embedding has no vectors for reads the A1111
word as ordinary text and drops an `embedding:name` reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lienzo.errors import InvalidArgumentError
from lienzo.text.tokenizer import CLIPTokenizer

MAX_VECTORS = 75
"""An embedding must fit one 75-token chunk."""
REFERENCE_PATTERN = re.compile(r"(?<![^\s,(\[])embedding:([^\s,]+)")
"""ComfyUI's `embedding:name`, at the start of a word; the name runs to the next space or comma."""
REFERENCE_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth")


@dataclass(frozen=True, eq=False)
class EmbeddingVectors:
    """One embedding's vectors: a (n, width) float tensor per text tower it was trained for.

    A single-tower file (SD 1.x/2.x) has one tensor; an SDXL file has clip_l then clip_g. `source` (the file)
    and `short_hash` (A1111's "TI hashes" entry: the file's sha256, first 12 hex digits) are None for
    embeddings made from tensors.
    """

    vectors: tuple[Tensor, ...]
    source: str | None = None
    short_hash: str | None = None

    def __post_init__(self) -> None:
        where = f" in {self.source}" if self.source else ""
        if not self.vectors:
            raise InvalidArgumentError(f"an embedding needs at least one tensor of vectors{where}")
        for tensor in self.vectors:
            if tensor.ndim != 2 or tensor.shape[0] < 1 or tensor.shape[1] < 1:
                raise InvalidArgumentError(
                    f"embedding vectors{where} have shape {tuple(tensor.shape)}; expected (vectors, width)"
                )
            if tensor.shape[0] > MAX_VECTORS:
                raise InvalidArgumentError(
                    f"the embedding{where} has {tensor.shape[0]} vectors; "
                    f"at most {MAX_VECTORS} fit a prompt chunk"
                )

    @classmethod
    def of(
        cls, *tensors: Tensor, source: str | None = None, short_hash: str | None = None
    ) -> EmbeddingVectors:
        """From tensors of shape (width,) or (n, width), stored as detached float32 on the CPU."""
        vectors = tuple(
            (tensor.unsqueeze(0) if tensor.ndim == 1 else tensor).detach().to("cpu", torch.float32)
            for tensor in tensors
        )
        return cls(vectors, source=source, short_hash=short_hash)

    @property
    def widths(self) -> tuple[int, ...]:
        """The width of each tensor (768 CLIP-L, 1024 OpenCLIP-H, 1280 OpenCLIP-bigG)."""
        return tuple(tensor.shape[1] for tensor in self.vectors)

    def for_towers(self, widths: Sequence[int]) -> list[Tensor | None]:
        """The tensor each tower of these widths uses: the first unused one of its width, else None."""
        unused = list(range(len(self.vectors)))
        assigned: list[Tensor | None] = []
        for width in widths:
            match = next((index for index in unused if self.vectors[index].shape[1] == width), None)
            if match is not None:
                unused.remove(match)
            assigned.append(None if match is None else self.vectors[match])
        return assigned


@dataclass(frozen=True)
class EmbeddingReference:
    """A ComfyUI `embedding:name` reference in a prompt."""

    name: str


@dataclass(frozen=True)
class EmbeddingSlot:
    """An embedding placed in a tokenized prompt: its name and its vectors for this tower (equal by name)."""

    name: str
    vectors: Tensor = field(compare=False)

    @property
    def length(self) -> int:
        """Token slots it takes."""
        return self.vectors.shape[0]


@dataclass(frozen=True)
class TowerEmbeddings:
    """What one tower needs to trigger embeddings: its vectors by name and the names' token ids."""

    vectors: Mapping[str, Tensor]
    known: frozenset[str]
    by_first_token: Mapping[int, tuple[tuple[tuple[int, ...], str], ...]]

    def resolve(self, reference: EmbeddingReference) -> EmbeddingSlot | None:
        """The slot an `embedding:name` reference stands for; None when this tower has no vectors for it."""
        name = resolve_name(reference.name, self.known)
        return EmbeddingSlot(name, self.vectors[name]) if name in self.vectors else None

    def trigger(self, tokens: Sequence[int]) -> Iterator[int | EmbeddingSlot]:
        """The token ids with each embedding name's ids replaced by its slot (longest first, as A1111)."""
        position = 0
        while position < len(tokens):
            for ids, name in self.by_first_token.get(tokens[position], ()):
                if tuple(tokens[position : position + len(ids)]) == ids:
                    yield EmbeddingSlot(name, self.vectors[name])
                    position += len(ids)
                    break
            else:
                yield tokens[position]
                position += 1


def resolve_name(written: str, known: frozenset[str]) -> str:
    """The loaded embedding an `embedding:<written>` reference names (ComfyUI: a folder or extension may be
    written too); an unknown name is a user error."""
    candidates = [written]
    base = re.split(r"[/\\]", written)[-1]
    candidates.append(base)
    for suffix in REFERENCE_SUFFIXES:
        if base.lower().endswith(suffix):
            candidates.append(base[: -len(suffix)])
    for candidate in candidates:
        if candidate in known:
            return candidate
    loaded = ", ".join(sorted(known)) or "none"
    raise InvalidArgumentError(
        f"the prompt names embedding:{written}, but no embedding {base!r} is loaded (loaded: {loaded}); "
        "load its file or remove it from the prompt"
    )


def split_references(text: str) -> list[str | EmbeddingReference]:
    """`text` as plain pieces and `embedding:name` references, in order (plain pieces may be empty)."""
    pieces: list[str | EmbeddingReference] = []
    start = 0
    for match in REFERENCE_PATTERN.finditer(text):
        pieces += [text[start : match.start()], EmbeddingReference(match.group(1))]
        start = match.end()
    pieces.append(text[start:])
    return pieces


@dataclass(frozen=True)
class Embeddings:
    """A set of textual-inversion embeddings by name (A1111: the file stem, which triggers it in prompts).

    Build one from files with `lienzo.io.embedding_files.load_embeddings`, or from tensors with
    `Embeddings.from_tensors`. Immutable; `merged` gives a new set.
    """

    entries: Mapping[str, EmbeddingVectors] = field(default_factory=dict)
    _towers: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in self.entries:
            if not name or name != name.strip() or REFERENCE_PATTERN.search(name):
                raise InvalidArgumentError(
                    f"{name!r} cannot name an embedding; use a name without outer spaces or 'embedding:'"
                )
        object.__setattr__(self, "entries", dict(self.entries))

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor | Sequence[Tensor] | EmbeddingVectors]) -> Embeddings:
        """From {name: (n, width) tensor, a tensor per tower (e.g. [clip_l, clip_g]), or EmbeddingVectors}."""
        entries = {}
        for name, value in tensors.items():
            if isinstance(value, EmbeddingVectors):
                entries[name] = value
            elif isinstance(value, Tensor):
                entries[name] = EmbeddingVectors.of(value)
            else:
                entries[name] = EmbeddingVectors.of(*value)
        return cls(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __getitem__(self, name: str) -> EmbeddingVectors:
        return self.entries[name]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def merged(self, other: Embeddings) -> Embeddings:
        """This set plus `other`; a name in both is an error."""
        clash = sorted(set(self.entries) & set(other.entries))
        if clash:
            raise InvalidArgumentError(
                f"embedding names loaded twice: {', '.join(clash)}; rename or drop one of the files"
            )
        return Embeddings({**self.entries, **other.entries})

    def fitting(self, widths: Sequence[int]) -> Embeddings:
        """Only the embeddings with vectors for at least one tower of these widths (A1111 skips the rest)."""
        return Embeddings(
            {name: vectors for name, vectors in self.entries.items() if set(vectors.widths) & set(widths)}
        )

    def check_widths(self, widths: Sequence[int]) -> None:
        """Refuse an embedding whose vectors fit no tower of a model with text towers of these widths."""
        for name, vectors in self.entries.items():
            if not set(vectors.widths) & set(widths):
                what = vectors.source or f"embedding {name!r}"
                have = " and ".join(str(width) for width in vectors.widths)
                want = " and ".join(str(width) for width in widths)
                raise InvalidArgumentError(
                    f"{what} has {have}-wide vectors, but this model's text encoders are {want} wide; it "
                    "was made for another model family, use an embedding trained for this one"
                )

    def hashes(self, names: Sequence[str]) -> dict[str, str]:
        """A1111's "TI hashes" values: name -> short file hash, for the named embeddings read from files."""
        return {
            name: self.entries[name].short_hash
            for name in names
            if name in self.entries and self.entries[name].short_hash is not None
        }

    def for_towers(self, widths: Sequence[int], tokenizers: Sequence[CLIPTokenizer]) -> list[TowerEmbeddings]:
        """Per tower, its vectors and the token ids of every name under its tokenizer (cached)."""
        key = (tuple(widths), tuple(id(tokenizer) for tokenizer in tokenizers))
        cached = self._towers.get(key)
        if cached is not None and all(a is b for a, b in zip(cached[0], tokenizers, strict=True)):
            return cached[1]
        per_tower: list[dict[str, Tensor]] = [{} for _ in widths]
        for name, vectors in self.entries.items():
            for index, tensor in enumerate(vectors.for_towers(widths)):
                if tensor is not None:
                    per_tower[index][name] = tensor
        towers = [
            TowerEmbeddings(vectors, frozenset(self.entries), name_lookup(vectors, tokenizer))
            for vectors, tokenizer in zip(per_tower, tokenizers, strict=True)
        ]
        self._towers[key] = (tuple(tokenizers), towers)
        return towers


def name_lookup(
    vectors: Mapping[str, Tensor], tokenizer: CLIPTokenizer
) -> dict[int, tuple[tuple[tuple[int, ...], str], ...]]:
    """First token id -> (name token ids, name) pairs, longest first (A1111's `ids_lookup`)."""
    lookup: dict[int, list[tuple[tuple[int, ...], str]]] = {}
    for name in vectors:
        ids = tuple(tokenizer.tokenize(name))
        if ids:
            lookup.setdefault(ids[0], []).append((ids, name))
    return {first: tuple(sorted(pairs, key=lambda pair: -len(pair[0]))) for first, pairs in lookup.items()}
