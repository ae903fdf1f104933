"""Tokenizer training: a BPE vocabulary in CLIP's format that lienzo and transformers read identically."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import CLIPTokenizer as ReferenceTokenizer
from transformers import CLIPTokenizerFast as ReferenceFastTokenizer

from lienzo.errors import CorruptCheckpointError, InvalidArgumentError
from lienzo.text.tokenizer import BOS_TOKEN, END_OF_WORD, EOS_TOKEN, CLIPTokenizer
from lienzo.training.tokenizer_training import BASE_VOCAB_SIZE, read_trained_tokenizer, train_clip_tokenizer

COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "white", "black"]
SHAPES = ["circle", "square", "triangle", "cross"]
PLACES = ["on the left", "in the top right", "at the bottom", "in the center"]


def captions() -> list[str]:
    """Shapes-world style captions over every colour, shape and a few positions."""
    return [
        f"a large {colour} {shape} {place} on a {background} background"
        for colour in COLOURS
        for shape in SHAPES
        for place in PLACES
        for background in COLOURS[:3]
        if background != colour
    ]


PROBES = [
    "a large red circle on the left on a blue background",
    "a small purple cross in the top right and a white square at the bottom on an orange background",
    "A  LARGE Green    Triangle!",
    "an unseen word: zebra 42, café — 🙂",
    "",
]


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    train_clip_tokenizer(captions(), vocab_size=700, folder=folder)
    return folder


def test_saved_files_follow_clips_layout(trained_folder: Path):
    tokenizer = CLIPTokenizer.from_folder(trained_folder)
    assert (trained_folder / "merges.txt").read_text(encoding="utf-8").startswith("#version")
    assert BASE_VOCAB_SIZE < len(tokenizer.vocab) <= 700
    assert tokenizer.vocab[BOS_TOKEN] == len(tokenizer.vocab) - 2
    assert tokenizer.vocab[EOS_TOKEN] == len(tokenizer.vocab) - 1
    assert tokenizer.vocab["a"] == 64 and tokenizer.vocab[f"a{END_OF_WORD}"] == 320, "CLIP's byte-symbol ids"
    assert f"background{END_OF_WORD}" in tokenizer.vocab


def test_common_words_become_single_tokens(trained_folder: Path):
    tokenizer = CLIPTokenizer.from_folder(trained_folder)
    ids = tokenizer.tokenize("a large red circle on a blue background")
    assert len(ids) == 8
    assert ids[0] == tokenizer.vocab[f"a{END_OF_WORD}"]


@pytest.mark.parametrize("reference_class", [ReferenceTokenizer, ReferenceFastTokenizer])
def test_ids_match_transformers_clip_tokenizer_on_the_saved_files(trained_folder: Path, reference_class):
    ours = CLIPTokenizer.from_folder(trained_folder)
    reference = reference_class.from_pretrained(trained_folder)
    for probe in PROBES:
        expected = reference([probe], padding="max_length", max_length=40, truncation=True).input_ids
        assert ours([probe], length=40).tolist() == expected, probe


def test_too_small_vocabulary_is_refused():
    with pytest.raises(InvalidArgumentError, match="no room for merges"):
        train_clip_tokenizer(captions(), vocab_size=BASE_VOCAB_SIZE)


def test_tokenizer_files_that_do_not_parse_are_a_clear_error(trained_folder: Path, tmp_path: Path):
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((trained_folder / name).read_bytes())
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": ', encoding="utf-8")
    with pytest.raises(CorruptCheckpointError, match="vocab.json|do not parse"):
        read_trained_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_bytes((trained_folder / "vocab.json").read_bytes())
    (tmp_path / "merges.txt").write_text("#version: 0.2\nzz qq\n", encoding="utf-8")
    with pytest.raises(CorruptCheckpointError, match="do not parse"):
        read_trained_tokenizer(tmp_path)
    assert read_trained_tokenizer(trained_folder).vocab == CLIPTokenizer.from_folder(trained_folder).vocab
