"""The x-ray's token breakdown: how each tokenizer split a prompt into A1111's weighted 75-token chunks.

Every token gets its place in the cross-attention context (chunk * 77 + 1 + offset: each chunk is start
token, up to 75 tokens, end token and padding), its id, vocabulary text and weight, and the prompt word it
came from. Words are CLIP's pre-tokenizer words (runs of letters, single digits), numbered in the order
they appear in the prompt; punctuation belongs to no word. A textual-inversion embedding is one word of
its own; `<lora:…>` and `<hypernet:…>` tags are listed apart, as the encoders never see them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

from lienzo.text.conditioning import CHUNK_LENGTH, EMBEDDING_PLACEHOLDER_ID, TextEncoders, chunk_prompt
from lienzo.text.embeddings import EmbeddingReference, EmbeddingSlot, TowerEmbeddings, split_references
from lienzo.text.network_tags import extract_network_tags
from lienzo.text.prompt_syntax import is_break, parse_prompt
from lienzo.text.tokenizer import CLIPTokenizer


@dataclass(frozen=True)
class Token:
    """One token of a chunk: its context position, id, vocabulary text, weight, word and embedding."""

    position: int
    id: int
    text: str
    weight: float
    word: int | None = None
    embedding: str | None = None


@dataclass(frozen=True)
class Chunk:
    """One 77-token row the text encoder reads: the prompt's tokens between the start and end tokens."""

    index: int
    tokens: tuple[Token, ...]


@dataclass(frozen=True)
class TowerTokens:
    """One tokenizer's chunks of the prompt."""

    tokenizer: int
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True)
class Word:
    """A word of the prompt: its index, its text and the context positions of its tokens (first tower)."""

    index: int
    text: str
    positions: tuple[int, ...]


@dataclass(frozen=True)
class NetworkTag:
    """A `<lora:…>`, `<lyco:…>` or `<hypernet:…>` tag: taken out of the text, applied to the networks."""

    kind: str
    name: str
    text_strength: float
    unet_strength: float


@dataclass(frozen=True)
class TokenBreakdown:
    """How a prompt reaches the text encoders: its tags, its BREAKs, each tokenizer's chunks, its words."""

    prompt: str
    text: str
    breaks: int
    tags: tuple[NetworkTag, ...]
    towers: tuple[TowerTokens, ...]
    words: tuple[Word, ...]

    def to_json(self) -> dict:
        """A JSON-serialisable dict of the whole breakdown."""
        return asdict(self)


@dataclass(frozen=True)
class _Piece:
    """A stretch of the prompt as the chunker sees it: token ids with their words, or one embedding."""

    ids: tuple[int, ...]
    words: tuple[int | None, ...]
    embedding: str | None = None


def token_breakdown(prompt: str, clip: TextEncoders) -> TokenBreakdown:
    """The breakdown of `prompt` under the model's text encoders (see the module docstring)."""
    text, loras, hypernets = extract_network_tags(prompt)
    tags = [NetworkTag("lora", tag.name, tag.text_strength, tag.unet_strength) for tag in loras]
    tags += [NetworkTag("hypernet", tag.name, tag.strength, tag.strength) for tag in hypernets]
    fragments = parse_prompt(text)
    towers_embeddings: list[TowerEmbeddings | None] = [None] * len(clip.tokenizers)
    if clip.embeddings is not None:
        widths = [model.config.hidden_size for model in clip.models]
        towers_embeddings = clip.embeddings.for_towers(widths, clip.tokenizers)
    towers, words = [], None
    for index, (tokenizer, embeddings) in enumerate(zip(clip.tokenizers, towers_embeddings, strict=True)):
        word_texts: list[str] = []
        pieces = list(_pieces(fragments, tokenizer, embeddings, word_texts))
        chunks = _tower_chunks(text, tokenizer, embeddings, pieces)
        towers.append(TowerTokens(index, chunks))
        if words is None:
            words = _words(word_texts, chunks)
    return TokenBreakdown(
        prompt=prompt,
        text=text,
        breaks=sum(1 for fragment in fragments if is_break(fragment)),
        tags=tuple(tags),
        towers=tuple(towers),
        words=tuple(words or ()),
    )


def _pieces(
    fragments: list[tuple[str, float]],
    tokenizer: CLIPTokenizer,
    embeddings: TowerEmbeddings | None,
    word_texts: list[str],
) -> Iterator[_Piece]:
    """The prompt's pieces in chunking order; every new word's text is appended to `word_texts`."""
    for fragment_text, _ in (fragment for fragment in fragments if not is_break(fragment)):
        parts = split_references(fragment_text) if embeddings is not None else [fragment_text]
        for part in parts:
            if isinstance(part, EmbeddingReference):
                slot = embeddings.resolve(part)
                if slot is not None:
                    word_texts.append(f"embedding:{part.name}")
                    yield _Piece((), (len(word_texts) - 1,), slot.name)
                continue
            encoding = tokenizer.backend.encode(part, add_special_tokens=False)
            words: list[int | None] = []
            seen: dict[int, int] = {}
            for word_id, (start, end) in zip(encoding.word_ids, encoding.offsets, strict=True):
                if not part[start:end].strip() or not any(char.isalnum() for char in part[start:end]):
                    words.append(None)
                    continue
                if word_id not in seen:
                    seen[word_id] = len(word_texts)
                    word_texts.append(part[start:end])
                else:
                    first = seen[word_id]
                    word_texts[first] = _join_word(part, encoding, word_id)
                words.append(seen[word_id])
            yield from _triggered(tuple(encoding.ids), tuple(words), tokenizer, embeddings, word_texts)


def _join_word(part: str, encoding, word_id: int) -> str:
    """The text of one pre-tokenizer word spanning several tokens."""
    pairs = zip(encoding.word_ids, encoding.offsets, strict=True)
    spans = [span for index, span in pairs if index == word_id]
    return part[spans[0][0] : spans[-1][1]]


def _triggered(
    ids: tuple[int, ...],
    words: tuple[int | None, ...],
    tokenizer: CLIPTokenizer,
    embeddings: TowerEmbeddings | None,
    word_texts: list[str],
) -> Iterator[_Piece]:
    """Token ids as pieces, embedding names among them replaced by their embeddings (as A1111 triggers)."""
    if embeddings is None:
        yield _Piece(ids, words)
        return
    position = 0
    for item in embeddings.trigger(list(ids)):
        if isinstance(item, EmbeddingSlot):
            length = len(tokenizer.tokenize(item.name))
            named = [word for word in words[position : position + length] if word is not None]
            if named:
                word_texts[named[0]] = item.name
            yield _Piece((), (named[0] if named else None,), item.name)
            position += length
        else:
            yield _Piece((item,), (words[position],))
            position += 1


def _tower_chunks(
    text: str, tokenizer: CLIPTokenizer, embeddings: TowerEmbeddings | None, pieces: list[_Piece]
) -> tuple[Chunk, ...]:
    """The chunks `chunk_prompt` makes, each token annotated with its word from `pieces`."""
    embedding_words = iter(piece.words[0] for piece in pieces if piece.embedding is not None)
    plain = iter(word for piece in pieces if piece.embedding is None for word in piece.words)
    by_id = {index: token for token, index in tokenizer.vocab.items()}
    chunks = []
    for chunk_index, chunk in enumerate(chunk_prompt(text, tokenizer, embeddings=embeddings)):
        slots = {offset: slot for offset, slot in chunk.embeddings}
        tokens, offset = [], 0
        while offset < len(chunk.tokens):
            position = chunk_index * CHUNK_LENGTH + 1 + offset
            if offset in slots:
                slot, word = slots[offset], next(embedding_words)
                tokens += [
                    Token(position + step, EMBEDDING_PLACEHOLDER_ID, slot.name, weight, word, slot.name)
                    for step, weight in enumerate(chunk.weights[offset : offset + slot.length])
                ]
                offset += slot.length
                continue
            token_id = chunk.tokens[offset]
            word = next(plain)
            tokens.append(Token(position, token_id, by_id.get(token_id, ""), chunk.weights[offset], word))
            offset += 1
        chunks.append(Chunk(chunk_index, tuple(tokens)))
    return tuple(chunks)


def _words(word_texts: list[str], chunks: tuple[Chunk, ...]) -> list[Word]:
    """The prompt's words with the context positions of their tokens."""
    positions: dict[int, list[int]] = {index: [] for index in range(len(word_texts))}
    for chunk in chunks:
        for token in chunk.tokens:
            if token.word is not None:
                positions[token.word].append(token.position)
    return [Word(index, word_texts[index], tuple(found)) for index, found in positions.items() if found]
