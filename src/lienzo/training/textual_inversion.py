"""Textual inversion (Gal et al. 2022; `lienzo train textual-inversion`): only the vectors of one new token
are trained, every network weight and every other token's embedding stays as it was; saved in A1111's
format and used in prompts by the file's stem.

The token's vectors take the place of the token's text in the captions exactly as a loaded embedding
takes the place of its name in a prompt (lienzo.text.embeddings: the name's token ids are matched and
replaced by the n vectors), so training and generation read the same conditioning. A token that is one
vocabulary word overrides that word while the embedding is loaded, as in A1111.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lienzo.errors import InvalidArgumentError
from lienzo.io.atomic import atomic_path
from lienzo.io.embedding_files import write_embedding_file
from lienzo.io.library import BUILTIN_NAME
from lienzo.text.conditioning import encode_prompts
from lienzo.text.embeddings import MAX_VECTORS, Embeddings, EmbeddingVectors
from lienzo.training.loop import train
from lienzo.training.method_run import (
    RunOptions,
    check_trainable_family,
    diffusion_objective,
    is_main_process,
    prepare_data,
    run_folder,
    train_config,
)
from lienzo.training.objective import LatentDiffusionObjective

EMBEDDING_SUFFIXES = (".pt", ".safetensors")
A1111_TOKEN = "*"
"""The key A1111 files hold their vectors under (`string_to_param["*"]`)."""
A1111_TOKEN_ID = 265
"""The CLIP id of "*" that A1111 writes in `string_to_token`."""


@dataclass(frozen=True)
class EmbeddingConfig:
    """The token the captions use, the word its vectors start from, and how many vectors it has."""

    token: str
    init_word: str = "*"
    vectors: int = 1

    def __post_init__(self) -> None:
        if not self.token.strip() or self.token != self.token.strip() or " " in self.token:
            raise InvalidArgumentError(f"--token must be one word without spaces, got {self.token!r}")
        if not 1 <= self.vectors <= MAX_VECTORS:
            raise InvalidArgumentError(f"--vectors must be from 1 to {MAX_VECTORS}, got {self.vectors}")


def initial_vectors(text_encoder: nn.Module, tokenizer, init_word: str, count: int) -> Tensor:
    """`count` vectors from the init word's token embeddings, spread over them as A1111 does (vector i
    is token i * tokens // count); zeros when the init word has no tokens."""
    table = text_encoder.text_model.embeddings.token_embedding.weight
    ids = tokenizer.tokenize_batch([init_word])[0]
    if not ids:
        return torch.zeros(count, table.shape[1])
    rows = table[torch.tensor(ids, device=table.device)].detach().float().cpu()
    return torch.stack([rows[index * len(ids) // count] for index in range(count)])


class EmbeddingNetwork(nn.Module):
    """The token's trainable vectors; calling it encodes captions with them in the token's place."""

    def __init__(self, config: EmbeddingConfig, spec, text_encoder: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self._base = ((spec, text_encoder, tokenizer),)
        init = initial_vectors(text_encoder, tokenizer, config.init_word, config.vectors)
        self.vectors = nn.Parameter(init.to(text_encoder.device))

    def embeddings(self) -> Embeddings:
        """The vectors as an Embeddings set under the token's name (a detached copy)."""
        return Embeddings({self.config.token: EmbeddingVectors.of(self.vectors)})

    def forward(self, captions: Sequence[str]) -> Tensor:
        live = Embeddings({self.config.token: EmbeddingVectors((self.vectors,))})
        return encode_prompts(list(captions), list(self._base), embeddings=live).context


class EmbeddingObjective(LatentDiffusionObjective):
    """The latent diffusion loss with only the embedding's vectors trained (networks frozen)."""

    def use_embedding(self, network: EmbeddingNetwork) -> None:
        """Train these vectors at the config's learning rate."""
        self.trainable = {"embedding": network}
        self.learning_rates = {"embedding": None}

    def describe(self) -> dict:
        """The base objective's settings and the token, init word and vector count."""
        return super().describe() | {"embedding": repr(self.trainable["embedding"].config)}

    def encode_captions(self, captions: Sequence[str], networks) -> Tensor:
        """The captions' context with the token's vectors in place (A1111 prompt reading)."""
        return networks.get("embedding", self.trainable["embedding"])(list(captions))


def check_token_in_captions(token: str, captions: list[str], folder: Path) -> None:
    """At least one caption must hold the token as a word, or nothing would train it."""
    pattern = re.compile(rf"(?<![\w]){re.escape(token)}(?![\w])", re.IGNORECASE)
    if not any(pattern.search(caption) for caption in captions):
        raise InvalidArgumentError(
            f"no caption in {folder} holds the token {token!r}; write it in the captions where the new "
            "concept is (e.g. 'a photo of {token}') or pick the --token the captions use"
        )


def write_a1111_embedding(path: Path, vectors: Tensor, name: str, step: int, checkpoint: str) -> Path:
    """A1111's `.pt` (string_to_token, string_to_param under "*", name, step, sd_checkpoint and
    sd_checkpoint_name), or kohya's `.safetensors` (`emb_params`); written atomically."""
    vectors = vectors.detach().float().cpu().clone()
    if path.suffix.lower() == ".safetensors":
        return write_embedding_file(path, EmbeddingVectors.of(vectors))
    data = {
        "string_to_token": {A1111_TOKEN: A1111_TOKEN_ID},
        "string_to_param": {A1111_TOKEN: vectors},
        "name": name,
        "step": step,
        "sd_checkpoint": None,
        "sd_checkpoint_name": checkpoint,
    }
    with atomic_path(path) as temporary:
        torch.save(data, temporary)
    return path


def train_textual_inversion(
    options: RunOptions,
    config: EmbeddingConfig,
    model,
    out: str | Path,
    *,
    resume: bool = False,
    sample_fn: Callable[[int, Path], None] | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """Train the token's vectors on `options.data` over `model` (a loaded model, float32, frozen) and
    write them to `out` (.pt A1111 or .safetensors); state, loss log and samples go to `run_folder(out)`.
    While sampling, `model.embeddings` holds the vectors so far (the sample prompts use the token)."""
    out = Path(out)
    check_trainable_family(model.spec, "textual inversion")
    if out.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise InvalidArgumentError(f"--out {out} must end in .pt (A1111) or .safetensors")
    folder = run_folder(out)
    dataset = prepare_data(options, model, folder)
    check_token_in_captions(config.token, [e.caption for e in dataset.examples], options.data.folder)
    objective = diffusion_objective(options, model, dataset, objective_class=EmbeddingObjective)
    tower = model.spec.text_encoders[0]
    network = EmbeddingNetwork(config, tower, model.text_encoders[0], model.tokenizers[0])
    objective.use_embedding(network)

    def sample_with_vectors(step: int, samples: Path) -> None:
        model.embeddings = network.embeddings()
        sample_fn(step, samples)

    result = train(
        train_config(options),
        objective,
        dataset,
        folder,
        resume=resume,
        device=device,
        sample_fn=sample_with_vectors if sample_fn else None,
    )
    if is_main_process():
        out.parent.mkdir(parents=True, exist_ok=True)
        write_a1111_embedding(out, network.vectors, out.stem, result.step, str(options.model or BUILTIN_NAME))
    return out
