"""`lienzo train textual-inversion`: new vectors for one token, saved as an A1111 embedding."""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.cli.train_arguments import (
    MethodDefaults,
    add_training_arguments,
    check_new_output,
    run_method,
)
from lienzo.recipes.fine_tuning import sample_writer
from lienzo.training.method_run import check_output_file
from lienzo.training.textual_inversion import EMBEDDING_SUFFIXES, EmbeddingConfig, train_textual_inversion

EMBEDDING_DEFAULTS = MethodDefaults(steps=300, batch_size=8, learning_rate=5e-3)
DEFAULT_VECTORS = 2

EMBEDDING_EPILOG = """examples:
  lienzo train textual-inversion --data stars/ --token star --init-word square --out models/embeddings/star.pt
  lienzo train textual-inversion --data cats/ --token mycat --init-word cat --vectors 4 --out cat.safetensors

The captions hold --token where the new concept is. Use the embedding by its file stem in a prompt
("a red star ..." for star.pt in models/embeddings). A --token that is one vocabulary word (e.g. cat)
replaces that word's meaning whenever the embedding is loaded, as in A1111.
"""


def add_embedding_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo train textual-inversion`."""
    parser.add_argument(
        "--out", type=Path, required=True, help="the embedding to write (.pt or .safetensors)"
    )
    embedding = parser.add_argument_group("embedding")
    embedding.add_argument("--token", required=True, help="the word the captions use for the new concept")
    embedding.add_argument("--init-word", default="*", help="word whose embedding the vectors start from (*)")
    embedding.add_argument("--vectors", type=int, default=DEFAULT_VECTORS, help="vectors per token (2)")
    add_training_arguments(parser, EMBEDDING_DEFAULTS)


def run_train_embedding(args: argparse.Namespace) -> int:
    """Train, write the file, say where it went, how long it took and how to use it."""
    check_output_file(args.out, EMBEDDING_SUFFIXES)
    check_new_output(args.out, args.resume)
    config = EmbeddingConfig(args.token, args.init_word, args.vectors)

    def train(options, pipe):
        train_textual_inversion(
            options,
            config,
            pipe,
            args.out,
            resume=args.resume,
            sample_fn=sample_writer(pipe, options),
            device=pipe.device,
        )

    hint = f"; write {args.out.stem} in a prompt to use it"
    return run_method(args, "textual inversion", "embedding", train, hint=hint)
