"""Prompt encoding, A1111 style: weighted 75-token chunks, several CLIP towers, clip skip, pooled vector."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lienzo.errors import InvalidArgumentError
from lienzo.models.clip import CLIPTextModel
from lienzo.models.specs import TextEncoderSpec
from lienzo.text.prompt_syntax import is_break, parse_prompt
from lienzo.text.tokenizer import CLIPTokenizer

CHUNK_TOKENS = 75
CHUNK_LENGTH = CHUNK_TOKENS + 2
COMMA_TOKEN = ",</w>"
COMMA_BACKTRACK = 20


@dataclass
class PromptEncoding:
    """Cross-attention context (B, tokens, features) and the pooled text vector (B, P), if any."""

    context: Tensor
    pooled: Tensor | None = None


@dataclass
class TokenChunk:
    """Up to 75 token ids of one prompt, without start and end tokens, and the weight of each."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def chunk_prompt(
    text: str, tokenizer: CLIPTokenizer, *, comma_backtrack: int = COMMA_BACKTRACK
) -> list[TokenChunk]:
    """Tokenize an A1111-syntax prompt into weighted chunks of at most 75 tokens, as A1111 does.

    Each fragment of `parse_prompt` is tokenized on its own and its tokens carry its weight. `BREAK` closes
    the current chunk. When a chunk fills up and its last comma is within `comma_backtrack` tokens of the
    end, the tokens after that comma move to the next chunk (0 turns this off). No tokens: one empty chunk.
    """
    fragments = parse_prompt(text)
    texts = [fragment[0] for fragment in fragments if not is_break(fragment)]
    token_ids = iter(tokenizer.tokenize_batch(texts))
    comma_id = tokenizer.vocab.get(COMMA_TOKEN)
    chunks: list[TokenChunk] = []
    current = TokenChunk()
    last_comma = -1
    for fragment in fragments:
        if is_break(fragment):
            chunks.append(current)
            current, last_comma = TokenChunk(), -1
            continue
        for token in next(token_ids):
            if token == comma_id:
                last_comma = len(current.tokens)
            elif len(current.tokens) == CHUNK_TOKENS and last_comma >= max(0, CHUNK_TOKENS - comma_backtrack):
                cut = last_comma + 1
                moved = TokenChunk(current.tokens[cut:], current.weights[cut:])
                chunks.append(TokenChunk(current.tokens[:cut], current.weights[:cut]))
                current, last_comma = moved, -1
            if len(current.tokens) == CHUNK_TOKENS:
                chunks.append(current)
                current, last_comma = TokenChunk(), -1
            current.tokens.append(token)
            current.weights.append(fragment[1])
    if current.tokens or not chunks:
        chunks.append(current)
    return chunks


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


def encode_prompts(
    prompts: list[str],
    encoders: list[tuple[TextEncoderSpec, CLIPTextModel, CLIPTokenizer]],
    *,
    clip_skip: int = 1,
) -> PromptEncoding:
    """Encode prompts with every tower: contexts joined on the feature axis, pooled from the `pooled` tower.

    Prompts use A1111 syntax (`parse_prompt`) and are encoded in 77-token chunks (`chunk_prompt`) joined
    on the token axis; every prompt and tower gets the same number of chunks (padded with empty chunks).
    Token weights apply to each tower's output by `emphasize`; the pooled vector comes from the first chunk,
    unweighted. Gradients flow; wrap the call in `torch.no_grad()` for inference.
    """
    if not encoders:
        raise InvalidArgumentError("encode_prompts needs at least one text encoder")
    if not prompts:
        raise InvalidArgumentError("encode_prompts needs at least one prompt (an empty string is fine)")
    chunked = [[chunk_prompt(prompt, tokenizer) for prompt in prompts] for _, _, tokenizer in encoders]
    num_chunks = max(len(chunks) for per_encoder in chunked for chunks in per_encoder)
    contexts = []
    pooled = None
    for (spec, model, tokenizer), chunks_per_prompt in zip(encoders, chunked, strict=True):
        layer = skipped_layer_index(spec, model, clip_skip)
        ids, weights = chunk_token_ids(chunks_per_prompt, tokenizer, num_chunks)
        wants_pooled = spec.pooled and pooled is None
        output = model(
            ids.reshape(-1, CHUNK_LENGTH).to(model.device),
            hidden_layer=layer,
            final_norm=spec.final_norm,
            want_pooled=wants_pooled,
        )
        hidden = emphasize(output.hidden, weights.reshape(-1, CHUNK_LENGTH))
        contexts.append(hidden.reshape(len(prompts), num_chunks * CHUNK_LENGTH, -1))
        if wants_pooled:
            pooled = output.pooled.reshape(len(prompts), num_chunks, -1)[:, 0]
    return PromptEncoding(context=torch.cat(contexts, dim=-1), pooled=pooled)


@dataclass(frozen=True)
class TextEncoders:
    """A model's CLIP towers with their specs and tokenizers (what a graph passes as CLIP)."""

    specs: tuple[TextEncoderSpec, ...]
    models: list[CLIPTextModel]
    tokenizers: list[CLIPTokenizer]

    @torch.inference_mode()
    def encode(self, prompts: list[str], *, clip_skip: int = 1) -> PromptEncoding:
        """Text conditioning of a batch of prompts (long prompts in 75-token chunks, A1111 style)."""
        encoders = list(zip(self.specs, self.models, self.tokenizers, strict=True))
        return encode_prompts(prompts, encoders, clip_skip=clip_skip)
