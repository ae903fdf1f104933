"""The shipped star LoRA and star embedding (trained on shapes-v2 by bench/finetune_proof.py): found by name
right after install, in the formats A1111 and kohya write; they change what shapes-v2 draws, and diffusers
(`load_lora_weights`, `load_textual_inversion`) draws the same latents with them as lienzo."""

from __future__ import annotations

import json
import warnings

import diffusers
import pytest
import torch
from safetensors import safe_open

import lienzo
from lienzo.cli import main
from lienzo.io.embedding_files import load_embeddings
from lienzo.io.library import BUILTIN_ROOT, ModelLibrary
from lienzo.pipelines.generation import generate_latents
from lienzo.pipelines.loras import ModelMismatchWarning
from lienzo.text.embeddings import Embeddings
from test_generate_parity import SIZE, TOLERANCE, euler_karras, lienzo_setup, reference_latents

SHAPES_V2 = BUILTIN_ROOT / "shapes-v2"
EXAMPLES = BUILTIN_ROOT / "examples"
PROMPT = "a red star on the left on a blue background"
SETTINGS = {"seed": 3, "steps": 4, "progress": False}


def test_the_examples_are_listed_by_name():
    library = ModelLibrary()
    assert library.resolve("loras", "star") == EXAMPLES / "star.safetensors"
    assert "star-embedding" in [entry.name for entry in library.list("embeddings")]


def test_the_star_lora_is_a_kohya_locon_file_for_shapes_v2_and_changes_the_image():
    with safe_open(EXAMPLES / "star.safetensors", "pt") as handle:
        metadata = handle.metadata()
        keys = list(handle.keys())
    assert metadata["ss_sd_model_name"] == "shapes-v2" and metadata["ss_network_module"] == "lycoris.kohya"
    assert json.loads(metadata["ss_network_args"])["algo"] == "locon"
    assert keys and all(key.startswith("lora_unet_") for key in keys)
    assert any("_resnets_" in key and key.endswith("conv1.lora_down.weight") for key in keys)
    pipe = lienzo.load(SHAPES_V2)
    plain = pipe.generate(PROMPT, **SETTINGS)[0]
    with_lora = pipe.generate(f"{PROMPT} <lora:star:1>", **SETTINGS)[0]
    assert plain.tobytes() != with_lora.tobytes()


def test_the_star_embedding_is_triggered_by_its_name_only():
    with safe_open(EXAMPLES / "star-embedding.safetensors", "pt") as handle:
        vectors = handle.get_tensor("emb_params")
    pipe = lienzo.load(SHAPES_V2)
    assert vectors.shape[1] == pipe.text_encoders[0].config.hidden_size
    embeddings = pipe.prompt_embeddings()
    assert "star-embedding" in embeddings.entries
    plain = pipe.generate(PROMPT, **SETTINGS)[0]
    triggered = pipe.generate(PROMPT.replace("star", "star-embedding"), **SETTINGS)[0]
    assert plain.tobytes() != triggered.tobytes()
    assert torch.equal(embeddings.entries["star-embedding"].vectors[0].float(), vectors.float())


def test_the_lora_works_from_the_command_line_on_the_default_model(tmp_path):
    out = tmp_path / "star.png"
    prompt = "a red star on the left on a blue background <lora:star:1>"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelMismatchWarning)
        assert main(["generate", prompt, "--steps", "4", "--out", str(out)]) == 0
    assert out.is_file()


def latents_both_ways(prompt: str, prepare_reference, prepare_ours) -> tuple[torch.Tensor, ...]:
    """shapes-v2's txt2img latents at 32x32, 4 Euler steps over Karras sigmas, from lienzo without any
    example (no embeddings, not even the built-in ones) and with one applied, and from diffusers with it,
    all from lienzo's seeded start."""
    reference = diffusers.StableDiffusionPipeline.from_pretrained(
        SHAPES_V2, safety_checker=None, torch_dtype=torch.float32
    )
    reference.scheduler = euler_karras(reference)
    reference.set_progress_bar_config(disable=True)
    prepare_reference(reference)
    pipe, options = lienzo_setup("sd1", SHAPES_V2, prompt=prompt, negative_prompt=None)
    pipe.embeddings = Embeddings()
    plain = generate_latents(pipe, options, progress=False)
    prepare_ours(pipe)
    ours = generate_latents(pipe, options, progress=False)
    expected = reference_latents(reference, pipe, options, prompt, negative=None, size=SIZE)
    return plain, ours, expected


def test_diffusers_draws_the_same_latents_with_the_shipped_lora():
    def fuse(reference):
        reference.load_lora_weights(str(EXAMPLES / "star.safetensors"), adapter_name="star")
        reference.fuse_lora(lora_scale=1.0)

    plain, ours, expected = latents_both_ways(PROMPT, fuse, lambda pipe: pipe.loras.add("star", 1.0))
    assert (plain - ours).abs().max() > 100 * TOLERANCE
    assert (ours - expected).abs().max() < TOLERANCE


def test_diffusers_draws_the_same_latents_with_the_shipped_embedding():
    path = EXAMPLES / "star-embedding.safetensors"
    prompt = PROMPT.replace("star", "star-embedding")
    plain, ours, expected = latents_both_ways(
        prompt,
        lambda reference: reference.load_textual_inversion(str(path), token="star-embedding"),
        lambda pipe: setattr(pipe, "embeddings", load_embeddings(path)),
    )
    assert (plain - ours).abs().max() > 100 * TOLERANCE
    assert (ours - expected).abs().max() < TOLERANCE


def test_the_star_lora_on_shapes_v1_says_it_was_made_for_shapes_v2():
    with pytest.warns(ModelMismatchWarning, match="trained on the built-in shapes-v2, not on shapes-v1"):
        lienzo.load(BUILTIN_ROOT / "shapes-v1").loras.add("star", 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelMismatchWarning)
        lienzo.load().loras.add("star", 1.0)  # the default built-in is shapes-v2
