"""A CLIP-format BPE vocabulary (Sennrich et al. 2016; Radford et al. 2021) learned from captions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

from lienzo.errors import CorruptCheckpointError, InvalidArgumentError, ModelNotFoundError
from lienzo.text.tokenizer import (
    BOS_TOKEN,
    CLIP_WORD_PATTERN,
    END_OF_WORD,
    EOS_TOKEN,
    CLIPTokenizer,
    byte_alphabet,
)

BASE_VOCAB_SIZE = 2 * 256 + 2
"""The 256 byte symbols, the same with the end-of-word suffix, and the two special tokens."""


def clip_trainer_pipeline() -> Tokenizer:
    """An untrained BPE pipeline with CLIP's normalisation, pre-tokenisation and `</w>` end-of-word suffix."""
    backend = Tokenizer(BPE(end_of_word_suffix=END_OF_WORD, continuing_subword_prefix=""))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return backend


def learn_merges(captions: Iterable[str], vocab_size: int) -> list[str]:
    """BPE merges ("a b" strings, in learning order) for a vocabulary of at most `vocab_size` entries."""
    if vocab_size <= BASE_VOCAB_SIZE:
        raise InvalidArgumentError(
            f"vocab_size {vocab_size} leaves no room for merges; use more than {BASE_VOCAB_SIZE}"
        )
    alphabet = byte_alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(alphabet) + 2,
        min_frequency=2,
        show_progress=False,
        special_tokens=[BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=alphabet,
        end_of_word_suffix=END_OF_WORD,
    )
    backend = clip_trainer_pipeline()
    backend.train_from_iterator(captions, trainer=trainer)
    merges = json.loads(backend.to_str())["model"]["merges"]
    joined = [merge if isinstance(merge, str) else " ".join(merge) for merge in merges]
    return joined[: vocab_size - BASE_VOCAB_SIZE]


def clip_vocab(merges: list[str]) -> dict[str, int]:
    """CLIP's id order: bytes, bytes + `</w>`, one token per merge, then start and end tokens."""
    alphabet = byte_alphabet()
    tokens = alphabet + [char + END_OF_WORD for char in alphabet]
    seen = set(tokens)
    for merge in merges:
        token = merge.replace(" ", "")
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def train_clip_tokenizer(
    captions: Iterable[str], vocab_size: int, folder: str | Path | None = None
) -> CLIPTokenizer:
    """Learn a CLIP-format tokenizer from captions; with `folder`, save vocab.json, merges.txt and the
    special-token files there (what `CLIPTokenizer.from_folder` and transformers' CLIPTokenizer read)."""
    merges = learn_merges(captions, vocab_size)
    tokenizer = CLIPTokenizer(clip_vocab(merges), merges)
    if folder is not None:
        tokenizer.save(folder)
    return tokenizer


def read_trained_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """Read a tokenizer folder, turning a file that does not parse into an error that names it."""
    try:
        return CLIPTokenizer.from_folder(folder)
    except (ModelNotFoundError, InvalidArgumentError):
        raise
    except Exception as error:
        raise CorruptCheckpointError(
            f"the tokenizer files in {folder} do not parse ({type(error).__name__}: {error}); "
            "write them again with train_clip_tokenizer or copy a working tokenizer folder"
        ) from error
