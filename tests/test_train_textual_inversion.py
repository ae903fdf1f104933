"""Textual inversion: only the token's vectors train, the A1111 file reads back in lienzo and diffusers with
the same latents, and the command refuses captions without the token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lienzo
from lienzo.cli import main
from lienzo.io.embedding_files import load_embeddings, read_embedding_file
from lienzo.io.library import TRAINING_STATE, ModelLibrary
from lienzo.pipelines.generation import generate_latents
from lienzo.pipelines.options import resolve_options
from lienzo.recipes.fine_tuning import load_for_training, write_concept_folder
from lienzo.training.captioned_dataset import DataConfig
from lienzo.training.checkpoint import CHECKPOINT_NAME
from lienzo.training.method_run import RunOptions
from lienzo.training.textual_inversion import EmbeddingConfig, train_textual_inversion, write_a1111_embedding
from test_generate_parity import STEPS, TOLERANCE, reference_latents, reference_pipeline
from tiny_models import tiny_pipeline_folder

PROMPT = "a photo of sks on a blue background"


@pytest.fixture(scope="module")
def stars(tmp_path_factory) -> Path:
    return write_concept_folder(tmp_path_factory.mktemp("stars"), "star", 6)


def test_only_the_new_vectors_change_and_the_file_holds_them(stars, tmp_path):
    pipe = load_for_training(None, torch.device("cpu"), "textual inversion")
    frozen = {name: tensor.clone() for name, tensor in pipe.text_encoders[0].state_dict().items()}
    frozen_unet = {name: tensor.clone() for name, tensor in pipe.unet.state_dict().items()}
    options = RunOptions(
        DataConfig(stars, resolution=128), steps=3, batch_size=2, learning_rate=0.05, progress=False
    )
    config = EmbeddingConfig("star", init_word="square", vectors=2)
    out = train_textual_inversion(options, config, pipe, tmp_path / "star.pt", device="cpu")
    square = pipe.tokenizers[0].tokenize_batch(["square"])[0]
    start = pipe.text_encoders[0].text_model.embeddings.token_embedding.weight[square].detach()
    vectors = read_embedding_file(out).vectors[0]
    assert vectors.shape == (2, start.shape[1])
    assert (vectors - start.expand_as(vectors)).abs().max() > 1e-3
    for name, tensor in pipe.text_encoders[0].state_dict().items():
        assert torch.equal(tensor, frozen[name]), name
    assert all(torch.equal(tensor, frozen_unet[name]) for name, tensor in pipe.unet.state_dict().items())
    data = torch.load(out, weights_only=True)
    assert data["name"] == "star" and data["step"] == 3 and set(data["string_to_param"]) == {"*"}


def test_captions_without_the_token_are_refused(stars, tmp_path, capsys):
    out = tmp_path / "cat.safetensors"
    arguments = ["train", "textual-inversion", "--data", str(stars), "--token", "mycat", "--out", str(out)]
    assert main([*arguments, "--quiet"]) == 1
    assert "no caption" in capsys.readouterr().err and not out.exists()


def test_the_command_writes_an_embedding_that_prompts_trigger_and_its_run_is_no_embedding(stars, tmp_path):
    out = tmp_path / "star.safetensors"
    arguments = ["--data", str(stars), "--token", "star", "--init-word", "square", "--out", str(out)]
    assert (
        main(["train", "textual-inversion", *arguments, "--steps", "2", "--batch-size", "2", "--quiet"]) == 0
    )
    assert (tmp_path / "star-training" / CHECKPOINT_NAME).is_file() and CHECKPOINT_NAME == TRAINING_STATE
    assert list(load_embeddings(tmp_path).entries) == ["star"]
    listed = ModelLibrary(embeddings=tmp_path, builtin=False).list("embeddings")
    assert [entry.name for entry in listed] == ["star"]
    pipe = lienzo.load()
    plain = pipe.encode_prompt(["a red star on a blue background"]).context
    pipe.embeddings = load_embeddings(out)
    encoding = pipe.encode_prompt(["a red star on a blue background"])
    assert encoding.embeddings_used == ("star",)
    assert not torch.allclose(plain, encoding.context)


def test_diffusers_draws_the_same_latents_with_the_embedding(tmp_path):
    pipe = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    width = pipe.text_encoders[0].config.hidden_size
    path = write_a1111_embedding(
        tmp_path / "sks.pt",
        torch.randn(2, width, generator=torch.Generator().manual_seed(3)),
        "sks",
        10,
        "tiny",
    )
    options = resolve_options(
        pipe.spec,
        prompt=PROMPT,
        width=32,
        height=32,
        steps=STEPS,
        cfg=6.0,
        sampler="euler",
        scheduler="karras",
        seed=7,
    )
    plain = generate_latents(pipe, options, progress=False)
    pipe.embeddings = load_embeddings(path)
    ours = generate_latents(pipe, options, progress=False)
    reference = reference_pipeline("sd1")
    reference.load_textual_inversion(str(path), token="sks")
    expected = reference_latents(reference, pipe, options, PROMPT, negative=None, size=32)
    assert (plain - ours).abs().max() > 100 * TOLERANCE
    assert (ours - expected).abs().max() < TOLERANCE
