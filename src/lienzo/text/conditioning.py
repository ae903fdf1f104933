"""Prompt encoding: token chunks of 75 (A1111 style), one or more CLIP towers, clip skip, pooled output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InvalidArgumentError
from ..models.clip import CLIPTextModel
from ..models.specs import TextEncoderSpec
from .tokenizer import CLIPTokenizer

CHUNK_TOKENS = 75
CHUNK_LENGTH = CHUNK_TOKENS + 2


@dataclass
class Conditioning:
    """Cross-attention context (B, tokens, features) and the pooled text vector (B, P), if any."""

    context: Tensor
    pooled: Tensor | None = None


def split_into_chunks(ids: Sequence[int], chunk_size: int = CHUNK_TOKENS) -> list[list[int]]:
    """Split one prompt's token ids into chunks of at most `chunk_size`; no tokens give one empty chunk."""
    if not ids:
        return [[]]
    return [list(ids[start : start + chunk_size]) for start in range(0, len(ids), chunk_size)]


def chunk_token_ids(
    chunks_per_prompt: Sequence[Sequence[Sequence[int]]], tokenizer: CLIPTokenizer, num_chunks: int
) -> Tensor:
    """(B, num_chunks, 77) ids: each chunk as start + tokens + end + padding, missing chunks left empty."""
    rows = []
    for chunks in chunks_per_prompt:
        padded = [*chunks, *([[]] * (num_chunks - len(chunks)))]
        for chunk in padded:
            row = [tokenizer.bos_id, *chunk, tokenizer.eos_id]
            rows.append(row + [tokenizer.pad_id] * (CHUNK_LENGTH - len(row)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(chunks_per_prompt), num_chunks, CHUNK_LENGTH)


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


def encode_prompts(
    prompts: list[str],
    encoders: list[tuple[TextEncoderSpec, CLIPTextModel, CLIPTokenizer]],
    *,
    clip_skip: int = 1,
) -> Conditioning:
    """Encode prompts with every tower: contexts joined on the feature axis, pooled from the `pooled` tower.

    Prompts longer than 75 tokens are encoded in 77-token chunks joined on the token axis; every prompt
    and tower gets the same number of chunks (padded with empty chunks). Gradients flow; wrap the call
    in `torch.no_grad()` for inference.
    """
    if not encoders:
        raise InvalidArgumentError("encode_prompts needs at least one text encoder")
    if not prompts:
        raise InvalidArgumentError("encode_prompts needs at least one prompt (an empty string is fine)")
    chunked = [
        [split_into_chunks(ids) for ids in tokenizer.tokenize_batch(prompts)] for _, _, tokenizer in encoders
    ]
    num_chunks = max(len(chunks) for per_encoder in chunked for chunks in per_encoder)
    contexts = []
    pooled = None
    for (spec, model, tokenizer), chunks_per_prompt in zip(encoders, chunked, strict=True):
        layer = skipped_layer_index(spec, model, clip_skip)
        ids = chunk_token_ids(chunks_per_prompt, tokenizer, num_chunks)
        device = model.text_model.embeddings.token_embedding.weight.device
        wants_pooled = spec.pooled and pooled is None
        output = model(
            ids.reshape(-1, CHUNK_LENGTH).to(device),
            hidden_layer=layer,
            final_norm=spec.final_norm,
            want_pooled=wants_pooled,
        )
        contexts.append(output.hidden.reshape(len(prompts), num_chunks * CHUNK_LENGTH, -1))
        if wants_pooled:
            pooled = output.pooled.reshape(len(prompts), num_chunks, -1)[:, 0]
    return Conditioning(context=torch.cat(contexts, dim=-1), pooled=pooled)
