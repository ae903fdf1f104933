"""Prompt encoding, A1111 style: weighted 75-token chunks, several CLIP towers, clip skip, pooled vector."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lienzo.errors import InvalidArgumentError
from lienzo.models.clip import CLIPTextModel
from lienzo.models.specs import TextEncoderSpec
from lienzo.text.embeddings import (
    EmbeddingReference,
    Embeddings,
    EmbeddingSlot,
    TowerEmbeddings,
    split_references,
)
from lienzo.text.prompt_syntax import is_break, parse_prompt
from lienzo.text.tokenizer import CLIPTokenizer

CHUNK_TOKENS = 75
CHUNK_LENGTH = CHUNK_TOKENS + 2
COMMA_TOKEN = ",</w>"
COMMA_BACKTRACK = 20
EMBEDDING_PLACEHOLDER_ID = 0
"""Token id in the slots of an embedding (A1111 uses 0): below the end token, so pooling still finds that."""


@dataclass
class PromptEncoding:
    """Cross-attention context (B, tokens, features) and the pooled text vector (B, P), if any.

    `embeddings_used` names the textual-inversion embeddings the prompts triggered, in order of first use.
    """

    context: Tensor
    pooled: Tensor | None = None
    embeddings_used: tuple[str, ...] = ()


@dataclass
class TokenChunk:
    """Up to 75 token ids of one prompt, without start and end tokens, and the weight of each.

    `embeddings` places textual-inversion vectors: (offset into `tokens`, slot); the slot's token ids are
    placeholders (`EMBEDDING_PLACEHOLDER_ID`, as A1111) whose input embeddings the vectors replace.
    """

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    embeddings: list[tuple[int, EmbeddingSlot]] = field(default_factory=list)

    def split(self, cut: int) -> tuple[TokenChunk, TokenChunk]:
        """The tokens before `cut` and those from `cut` on, each with its embeddings."""
        head = [(offset, slot) for offset, slot in self.embeddings if offset < cut]
        tail = [(offset - cut, slot) for offset, slot in self.embeddings if offset >= cut]
        return (
            TokenChunk(self.tokens[:cut], self.weights[:cut], head),
            TokenChunk(self.tokens[cut:], self.weights[cut:], tail),
        )


def chunk_prompt(
    text: str,
    tokenizer: CLIPTokenizer,
    *,
    comma_backtrack: int = COMMA_BACKTRACK,
    embeddings: TowerEmbeddings | None = None,
) -> list[TokenChunk]:
    """Tokenize an A1111-syntax prompt into weighted chunks of at most 75 tokens, as A1111 does.

    Each fragment of `parse_prompt` is tokenized on its own and its tokens carry its weight. `BREAK` closes
    the current chunk. When a chunk fills up and its last comma is within `comma_backtrack` tokens of the
    end, the tokens after that comma move to the next chunk (0 turns this off). No tokens: one empty chunk.
    With `embeddings`, embedding names and `embedding:name` references become `EmbeddingSlot`s of n
    token slots carrying the fragment's weight; a slot that does not fit the current chunk starts the next.
    """
    fragments = parse_prompt(text)
    pieces = [
        split_references(fragment[0]) if embeddings is not None else [fragment[0]]
        for fragment in fragments
        if not is_break(fragment)
    ]
    texts = [piece for parts in pieces for piece in parts if isinstance(piece, str)]
    token_ids = iter(tokenizer.tokenize_batch(texts))
    comma_id = tokenizer.vocab.get(COMMA_TOKEN)
    chunks: list[TokenChunk] = []
    current = TokenChunk()
    last_comma = -1
    fragment_pieces = iter(pieces)
    for fragment in fragments:
        if is_break(fragment):
            chunks.append(current)
            current, last_comma = TokenChunk(), -1
            continue
        for item in _fragment_items(next(fragment_pieces), token_ids, embeddings):
            if item == comma_id:
                last_comma = len(current.tokens)
            elif len(current.tokens) == CHUNK_TOKENS and last_comma >= max(0, CHUNK_TOKENS - comma_backtrack):
                done, current = current.split(last_comma + 1)
                chunks.append(done)
                last_comma = -1
            if len(current.tokens) == CHUNK_TOKENS:
                chunks.append(current)
                current, last_comma = TokenChunk(), -1
            if isinstance(item, EmbeddingSlot):
                if len(current.tokens) + item.length > CHUNK_TOKENS:
                    chunks.append(current)
                    current, last_comma = TokenChunk(), -1
                current.embeddings.append((len(current.tokens), item))
                current.tokens += [EMBEDDING_PLACEHOLDER_ID] * item.length
                current.weights += [fragment[1]] * item.length
            else:
                current.tokens.append(item)
                current.weights.append(fragment[1])
    if current.tokens or not chunks:
        chunks.append(current)
    return chunks


def _fragment_items(
    pieces: list[str | EmbeddingReference], token_ids: Iterator[list[int]], embeddings: TowerEmbeddings | None
) -> Iterator[int | EmbeddingSlot]:
    """A fragment's token ids, with embeddings in place when there are any."""
    for piece in pieces:
        if isinstance(piece, EmbeddingReference):
            slot = embeddings.resolve(piece)
            if slot is not None:
                yield slot
        elif embeddings is None:
            yield from next(token_ids)
        else:
            yield from embeddings.trigger(next(token_ids))


def chunk_token_ids(
    chunks_per_prompt: Sequence[Sequence[TokenChunk]], tokenizer: CLIPTokenizer, num_chunks: int
) -> tuple[Tensor, Tensor]:
    """(B, num_chunks, 77) ids and weights: each chunk as start + tokens + end + padding, missing ones empty.

    Start, end and padding tokens weigh 1.
    """
    rows, weight_rows = [], []
    for chunks in chunks_per_prompt:
        for chunk in [*chunks, *([TokenChunk()] * (num_chunks - len(chunks)))]:
            row = [tokenizer.bos_id, *chunk.tokens, tokenizer.eos_id]
            padding = CHUNK_LENGTH - len(row)
            rows.append(row + [tokenizer.pad_id] * padding)
            weight_rows.append([1.0, *chunk.weights, 1.0] + [1.0] * padding)
    shape = (len(chunks_per_prompt), num_chunks, CHUNK_LENGTH)
    ids = torch.tensor(rows, dtype=torch.long).reshape(shape)
    return ids, torch.tensor(weight_rows, dtype=torch.float32).reshape(shape)


def emphasize(hidden: Tensor, weights: Tensor) -> Tensor:
    """A1111's "Original" emphasis: scale each token's state by its weight, then restore each chunk's mean.

    `hidden` is (N, 77, D), `weights` (N, 77). Chunks whose weights are all 1 come back bit for bit. The mean
    is taken per chunk of each prompt (A1111 takes it over the whole batch of one chunk index, which is the
    same when the batch repeats one prompt).
    """
    weights = weights.to(device=hidden.device, dtype=hidden.dtype)
    is_weighted = (weights != 1).any(dim=1).reshape(-1, 1, 1)
    if not is_weighted.any():
        return hidden
    weighted = hidden * weights.unsqueeze(-1)
    original_mean = hidden.mean(dim=(1, 2), keepdim=True)
    restored = weighted * (original_mean / weighted.mean(dim=(1, 2), keepdim=True))
    return torch.where(is_weighted, restored, hidden)


def skipped_layer_index(spec: TextEncoderSpec, model: CLIPTextModel, clip_skip: int) -> int:
    """Hidden-state index (1 = first layer's output) that `spec` reads under clip skip `clip_skip`."""
    if clip_skip < 1:
        raise InvalidArgumentError(f"clip skip must be 1 or more (1 = no skip), got {clip_skip}")
    index = model.hidden_state_index(spec.hidden_layer) - (clip_skip - 1)
    if index < 1:
        depth = model.config.num_hidden_layers
        raise InvalidArgumentError(
            f"clip skip {clip_skip} goes past the first layer of a {depth}-layer text encoder; "
            "use a smaller clip skip"
        )
    return index


def input_embeddings(model: CLIPTextModel, ids: Tensor, chunks: Sequence[TokenChunk | None]) -> Tensor | None:
    """Token embeddings of `ids` (N, 77) with each chunk's embedding vectors in their slots; None if none.

    `chunks` lists the chunk of each row (None for padding rows). Gradients reach the vectors.
    """
    if not any(chunk is not None and chunk.embeddings for chunk in chunks):
        return None
    embeds = model.text_model.embeddings.token_embedding(ids)
    for row, chunk in enumerate(chunks):
        for offset, slot in chunk.embeddings if chunk is not None else ():
            start = 1 + offset
            embeds[row, start : start + slot.length] = slot.vectors.to(embeds.device, embeds.dtype)
    return embeds


def encode_prompts(
    prompts: list[str],
    encoders: list[tuple[TextEncoderSpec, CLIPTextModel, CLIPTokenizer]],
    *,
    clip_skip: int = 1,
    embeddings: Embeddings | None = None,
) -> PromptEncoding:
    """Encode prompts with every tower: contexts joined on the feature axis, pooled from the `pooled` tower.

    Prompts use A1111 syntax (`parse_prompt`) and are encoded in 77-token chunks (`chunk_prompt`) joined
    on the token axis; every prompt and tower gets the same number of chunks (padded with empty chunks).
    Token weights apply to each tower's output by `emphasize`; the pooled vector comes from the first chunk,
    unweighted. `embeddings` are triggered by their names and `embedding:name` (see lienzo.text.embeddings);
    an embedding that fits no tower is an error. Gradients flow; wrap the call in `torch.no_grad()` for
    inference.
    """
    if not encoders:
        raise InvalidArgumentError("encode_prompts needs at least one text encoder")
    if not prompts:
        raise InvalidArgumentError("encode_prompts needs at least one prompt (an empty string is fine)")
    towers: list[TowerEmbeddings | None] = [None] * len(encoders)
    if embeddings is not None:
        widths = [model.config.hidden_size for _, model, _ in encoders]
        embeddings.check_widths(widths)
        towers = embeddings.for_towers(widths, [tokenizer for _, _, tokenizer in encoders])
    chunked = [
        [chunk_prompt(prompt, tokenizer, embeddings=tower) for prompt in prompts]
        for (_, _, tokenizer), tower in zip(encoders, towers, strict=True)
    ]
    num_chunks = max(len(chunks) for per_encoder in chunked for chunks in per_encoder)
    contexts = []
    pooled = None
    for (spec, model, tokenizer), chunks_per_prompt in zip(encoders, chunked, strict=True):
        layer = skipped_layer_index(spec, model, clip_skip)
        ids, weights = chunk_token_ids(chunks_per_prompt, tokenizer, num_chunks)
        ids = ids.reshape(-1, CHUNK_LENGTH).to(model.device)
        rows = [
            chunk for chunks in chunks_per_prompt for chunk in [*chunks, *[None] * (num_chunks - len(chunks))]
        ]
        wants_pooled = spec.pooled and pooled is None
        output = model(
            ids,
            hidden_layer=layer,
            final_norm=spec.final_norm,
            want_pooled=wants_pooled,
            inputs_embeds=input_embeddings(model, ids, rows),
        )
        hidden = emphasize(output.hidden, weights.reshape(-1, CHUNK_LENGTH))
        contexts.append(hidden.reshape(len(prompts), num_chunks * CHUNK_LENGTH, -1))
        if wants_pooled:
            pooled = output.pooled.reshape(len(prompts), num_chunks, -1)[:, 0]
    used = (
        slot.name
        for per_encoder in chunked
        for chunks in per_encoder
        for chunk in chunks
        for _, slot in chunk.embeddings
    )
    return PromptEncoding(
        context=torch.cat(contexts, dim=-1), pooled=pooled, embeddings_used=tuple(dict.fromkeys(used))
    )


@dataclass(frozen=True)
class TextEncoders:
    """A model's CLIP towers with their specs and tokenizers (what a graph passes as CLIP), and the
    textual-inversion embeddings its prompts can trigger (refused at once if one fits no tower)."""

    specs: tuple[TextEncoderSpec, ...]
    models: list[CLIPTextModel]
    tokenizers: list[CLIPTokenizer]
    embeddings: Embeddings | None = None

    def __post_init__(self) -> None:
        if self.embeddings is not None:
            self.embeddings.check_widths([model.config.hidden_size for model in self.models])

    @torch.inference_mode()
    def encode(self, prompts: list[str], *, clip_skip: int = 1) -> PromptEncoding:
        """Text conditioning of a batch of prompts (long prompts in 75-token chunks, A1111 style)."""
        encoders = list(zip(self.specs, self.models, self.tokenizers, strict=True))
        return encode_prompts(prompts, encoders, clip_skip=clip_skip, embeddings=self.embeddings)
