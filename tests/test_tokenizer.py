"""CLIP tokenizer: bundled vocabulary facts and id parity with transformers' CLIPTokenizer."""

from __future__ import annotations

import json
import random

import pytest
import transformers

from lienzo.errors import InvalidArgumentError, ModelNotFoundError
from lienzo.text.tokenizer import CLIPTokenizer, clip_vocab_and_merges

SAMPLE_TEXTS = [
    "a photo of a cat",
    "A PHOTO OF A CAT",
    "",
    "   ",
    "Hello,   World!! It's 3.14159 — naïve café, résumé",
    "don't you'll we've I'M they'RE she'd it's",
    "emoji 🐱🚀👩‍🚀 and flags 🇪🇸",
    "日本語のテキスト 中文 한국어 العربية русский",
    "e\u0301 versus \u00e9 (combining accent vs precomposed)",
    "tab\tnew\nline\r\nand\u00a0nbsp",
    "masterpiece, best quality, (red:1.2) [blue] {green} <lora:x:0.5>",
    "numbers 1234567890 and 3rd 21st 1e-5 0x1F",
    "punctuation!?!?... ,,, ;;; :: -- __ ** // \\\\ || ~~ ``",
    "<|startoftext|>inside<|endoftext|> tokens",
    "hi!! hey! !",
    "'quoted' \"double\" ’curly’ “quotes”",
    "word " * 120,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    target = tmp_path_factory.mktemp("tokenizer")
    CLIPTokenizer.from_bundled().save(target)
    return target


@pytest.fixture(scope="module")
def reference(folder):
    return transformers.CLIPTokenizer.from_pretrained(folder)


def random_texts(count: int, seed: int) -> list[str]:
    """Random strings of letters, digits, punctuation, whitespace, accents, CJK, emoji, special tokens."""
    pieces = [
        *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        *"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        " ",
        "  ",
        "\t",
        "\n",
        "\u00a0",
        "é",
        "ß",
        "ñ",
        "\u0301",
        "ø",
        "漢",
        "字",
        "ア",
        "😀",
        "🎨",
        "\u200d",
        "'s",
        "'ll",
        "<|endoftext|>",
        "Ω",
        "½",
        "²",
    ]
    generator = random.Random(seed)
    return ["".join(generator.choices(pieces, k=generator.randint(0, 60))) for _ in range(count)]


def test_bundled_vocabulary_layout():
    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == 49408
    assert len(merges) == 48894
    assert vocab["!"] == 0
    assert vocab["!</w>"] == 256
    assert vocab["<|startoftext|>"] == 49406
    assert vocab["<|endoftext|>"] == 49407
    assert vocab["".join(merges[0].split(" "))] == 512


def test_known_ids():
    tokenizer = CLIPTokenizer.from_bundled()
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (49406, 49407, 49407)
    assert tokenizer.tokenize("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert tokenizer.tokenize("A  Photo\tof a CAT") == [320, 1125, 539, 320, 2368]
    assert CLIPTokenizer.from_bundled(pad_token="!").pad_id == 0


@pytest.mark.parametrize("text", SAMPLE_TEXTS)
def test_ids_match_transformers(reference, text):
    ours = CLIPTokenizer.from_bundled().tokenize(text)
    assert ours == reference(text, add_special_tokens=False).input_ids


def test_random_texts_match_transformers(reference):
    tokenizer = CLIPTokenizer.from_bundled()
    texts = random_texts(300, seed=0)
    expected = reference(texts, add_special_tokens=False).input_ids
    mismatches = [text for text, ids in zip(texts, expected, strict=True) if tokenizer.tokenize(text) != ids]
    assert mismatches == []


@pytest.mark.parametrize("pad_token", ["<|endoftext|>", "!"])
def test_padded_batch_matches_transformers(tmp_path, pad_token):
    tokenizer = CLIPTokenizer.from_bundled(pad_token=pad_token)
    tokenizer.save(tmp_path)
    reference = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    texts = ["a cat", "", "hi!! wow", "long " * 100]
    expected = reference(texts, padding="max_length", max_length=77, truncation=True).input_ids
    ids = tokenizer(texts)
    assert ids.shape == (4, 77)
    assert ids.tolist() == expected
    assert ids[3, -1].item() == tokenizer.eos_id
    assert ids[1, :3].tolist() == [49406, 49407, tokenizer.pad_id]


def test_short_length(reference):
    tokenizer = CLIPTokenizer.from_bundled()
    ids = tokenizer(["a photo of a cat"], length=5)
    assert ids.tolist() == [[49406, 320, 1125, 539, 49407]]
    with pytest.raises(InvalidArgumentError):
        tokenizer(["x"], length=1)


def test_folder_round_trip(folder):
    loaded = CLIPTokenizer.from_folder(folder)
    bundled = CLIPTokenizer.from_bundled()
    assert loaded.vocab == bundled.vocab
    assert loaded.merges == bundled.merges
    assert loaded.pad_id == bundled.pad_id
    text = random_texts(1, seed=3)[0] + " a photo of a cat"
    assert loaded.tokenize(text) == bundled.tokenize(text)


def test_folder_pad_token_from_config_dict(tmp_path):
    CLIPTokenizer.from_bundled().save(tmp_path)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "!"}}))
    assert CLIPTokenizer.from_folder(tmp_path).pad_id == 0


def test_missing_folder_files(tmp_path):
    with pytest.raises(ModelNotFoundError, match="vocab.json and merges.txt, or a BPE tokenizer.json"):
        CLIPTokenizer.from_folder(tmp_path)


def test_unknown_pad_token():
    with pytest.raises(InvalidArgumentError, match="pad token"):
        CLIPTokenizer.from_bundled(pad_token="<pad>")


def test_folder_saved_by_transformers_with_only_tokenizer_json(tmp_path):
    CLIPTokenizer.from_bundled("!").save(tmp_path / "ours")
    reference = transformers.CLIPTokenizer.from_pretrained(tmp_path / "ours")
    reference.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "vocab.json").exists()
    loaded = CLIPTokenizer.from_folder(tmp_path / "saved")
    texts = ["a RED circle, on a blue background!!", "don't  stop 🎨 123"]
    expected = reference(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert loaded.pad_id == reference.pad_token_id
    assert loaded(texts).tolist() == expected.input_ids.tolist()
