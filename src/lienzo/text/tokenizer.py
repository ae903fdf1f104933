"""CLIP byte-level BPE tokenizer (Radford et al. 2021; BPE after Sennrich et al. 2016) on `tokenizers`."""

from __future__ import annotations

import functools
import gzip
import json
from importlib import resources
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

from lienzo.errors import InvalidArgumentError, ModelNotFoundError

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
BUNDLED_MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 49152 - 256 - 2
END_OF_WORD = "</w>"
CLIP_WORD_PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
MERGES_HEADER = "#version: 0.2"


def byte_alphabet() -> list[str]:
    """The 256 printable characters standing for bytes 0..255 in byte-level BPE (GPT-2's byte-to-unicode map).

    Printable Latin-1 bytes stand for themselves; the others map to code points from 256 up, in byte order.
    The list is in vocabulary order: the self-mapped bytes first, then the shifted ones.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = [byte for byte in range(256) if byte not in set(printable)]
    return [chr(byte) for byte in printable] + [chr(256 + offset) for offset in range(len(shifted))]


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """CLIP's 49408-entry vocabulary and 48894 merges ("a b" strings) from the bundled merges file."""
    data = resources.files("lienzo.text").joinpath("data", BUNDLED_MERGES_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = lines[1 : MERGE_COUNT + 1]
    alphabet = byte_alphabet()
    tokens = alphabet + [char + END_OF_WORD for char in alphabet]
    tokens += ["".join(merge.split(" ")) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_backend(vocab: dict[str, int], merges: list[str], special_tokens: tuple[str, ...]) -> Tokenizer:
    """A `tokenizers` pipeline with CLIP's normalisation, pre-tokenisation and end-of-word BPE."""
    model = BPE(
        vocab=vocab,
        merges=[tuple(merge.split(" ")) for merge in merges],
        end_of_word_suffix=END_OF_WORD,
        continuing_subword_prefix="",
        unk_token=EOS_TOKEN,
        fuse_unk=False,
    )
    backend = Tokenizer(model)
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in special_tokens]
    )
    return backend


@functools.lru_cache(maxsize=4)
def bundled_backend(pad_token: str) -> Tokenizer:
    """The bundled CLIP tokenizer pipeline with `pad_token` as a special token, built once per pad token."""
    vocab, merges = clip_vocab_and_merges()
    return build_backend(vocab, merges, (BOS_TOKEN, EOS_TOKEN, pad_token))


def read_token(folder: Path, name: str, default: str) -> str:
    """A special token's text from special_tokens_map.json or tokenizer_config.json, else `default`."""
    for filename in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / filename
        if not path.is_file():
            continue
        value = json.loads(path.read_text(encoding="utf-8")).get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return value
    return default


def read_vocab_and_merges(folder: Path) -> tuple[dict[str, int], list[str]]:
    """BPE vocabulary and merges of a tokenizer folder: vocab.json + merges.txt, else tokenizer.json."""
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
        return vocab, [line for line in lines if line and not line.startswith("#version")]
    if (folder / "tokenizer.json").is_file():
        model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("model", {})
        if model.get("type") == "BPE":
            merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]
            return model["vocab"], merges
    raise ModelNotFoundError(
        f"no CLIP tokenizer in {folder}: it needs vocab.json and merges.txt, or a BPE tokenizer.json; point "
        "to a diffusers 'tokenizer' folder or use CLIPTokenizer.from_bundled()"
    )


class CLIPTokenizer:
    """CLIP's BPE tokenizer with transformers-identical ids; call it on prompts to get padded id tensors."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: list[str],
        *,
        pad_token: str = EOS_TOKEN,
        backend: Tokenizer | None = None,
    ):
        self.vocab = vocab
        self.merges = merges
        self.pad_token = pad_token
        self.backend = backend or build_backend(vocab, merges, (BOS_TOKEN, EOS_TOKEN, pad_token))
        self.bos_id = self.token_id(BOS_TOKEN)
        self.eos_id = self.token_id(EOS_TOKEN)
        self.pad_id = self.token_id(pad_token)

    @classmethod
    def from_bundled(cls, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
        """The tokenizer of OpenAI CLIP / OpenCLIP from the vocabulary shipped with lienzo."""
        vocab, merges = clip_vocab_and_merges()
        if pad_token not in vocab:
            raise InvalidArgumentError(f"pad token {pad_token!r} is not in the CLIP vocabulary; use e.g. '!'")
        return cls(vocab, merges, pad_token=pad_token, backend=bundled_backend(pad_token))

    @classmethod
    def from_folder(cls, path: str | Path) -> CLIPTokenizer:
        """Read a diffusers/transformers `tokenizer/` folder (vocab.json + merges.txt, or tokenizer.json)."""
        folder = Path(path)
        vocab, merges = read_vocab_and_merges(folder)
        pad_token = read_token(folder, "pad_token", EOS_TOKEN)
        if pad_token not in vocab:
            raise ModelNotFoundError(
                f"pad token {pad_token!r} of {folder} is not in its vocabulary; fix the folder"
            )
        return cls(vocab, merges, pad_token=pad_token)

    def token_id(self, token: str) -> int:
        """The id of one vocabulary entry."""
        if token not in self.vocab:
            raise InvalidArgumentError(f"{token!r} is not a token of this vocabulary")
        return self.vocab[token]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, without start and end tokens."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without start and end tokens."""
        return [encoding.ids for encoding in self.backend.encode_batch(texts, add_special_tokens=False)]

    def __call__(self, texts: list[str], length: int = 77) -> torch.Tensor:
        """(len(texts), length) ids: start, tokens truncated to fit, end, then padding."""
        if length < 2:
            raise InvalidArgumentError(
                f"token length {length} leaves no room for start and end tokens; use >= 2"
            )
        rows = []
        for ids in self.tokenize_batch(texts):
            row = [self.bos_id, *ids[: length - 2], self.eos_id]
            rows.append(row + [self.pad_id] * (length - len(row)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(texts), length)

    def save(self, folder: str | Path) -> None:
        """Write vocab.json, merges.txt and the special-token files that transformers' CLIPTokenizer reads."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        (target / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")
        (target / "merges.txt").write_text("\n".join([MERGES_HEADER, *self.merges]) + "\n", encoding="utf-8")
        special = {
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "unk_token": EOS_TOKEN,
            "pad_token": self.pad_token,
        }
        (target / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
        config = {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": 77,
            "do_lower_case": True,
            **special,
        }
        (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
