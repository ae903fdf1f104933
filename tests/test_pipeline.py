"""The public contract of `lienzo.load` against diffusers' reference pipelines on identical tiny weights."""

from __future__ import annotations

import diffusers
import pytest
import torch
import transformers

import lienzo
from lienzo.io import read_safetensors_metadata, write_safetensors
from lienzo.io.single_file import join_single_file
from parity import PROMPT_FAMILIES, PROMPTS, max_error, prompt_errors, unet_error, vae_errors
from tiny_models import FAMILIES, tiny_pipeline_folder

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


def test_load_detects_family(family):
    pipe = lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32)
    assert isinstance(pipe, lienzo.Pipeline)
    assert pipe.family == family
    assert pipe.spec.prediction == ("v" if family == "sd2-v" else "eps")


def test_unet_matches_diffusers(family):
    assert unet_error(family) < TOLERANCE


def test_vae_matches_diffusers(family):
    mean_error, decode_error = vae_errors(family)
    assert mean_error < TOLERANCE and decode_error < TOLERANCE
    expected_scale = diffusers.AutoencoderKL.load_config(tiny_pipeline_folder(family) / "vae")[
        "scaling_factor"
    ]
    pipe = lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32)
    assert pipe.spec.vae.scaling_factor == expected_scale


@pytest.mark.parametrize("family", PROMPT_FAMILIES)
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_encode_prompt_matches_reference_pipeline(family, clip_skip):
    context_error, pooled_error = prompt_errors(family, clip_skip)
    assert context_error < TOLERANCE
    assert (pooled_error is None) == (not family.startswith("sdxl"))
    assert pooled_error is None or pooled_error < TOLERANCE


def test_sd1_context_is_clip_last_hidden_state():
    folder = tiny_pipeline_folder("sd1")
    pipe = lienzo.load(folder, device="cpu", dtype=torch.float32)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoder = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    ids = tokenizer(
        PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        expected = encoder(ids).last_hidden_state
    assert max_error(pipe.encode_prompt(PROMPTS).context, expected) < TOLERANCE


def test_long_prompt_is_chunked():
    pipe = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    long_prompt = " ".join(["red circle"] * 60)
    cond = pipe.encode_prompt([long_prompt, "a blue square"])
    assert cond.context.shape == (2, 154, pipe.spec.unet.context_dim)


def test_single_file_round_trip_loads_identically(tmp_path):
    folder = tiny_pipeline_folder("sdxl")
    single = tmp_path / "tiny-sdxl.safetensors"
    lienzo.io.write_model(lienzo.io.read_model(folder), single, format="single-file")
    from_folder = lienzo.load(folder, device="cpu", dtype=torch.float32)
    from_file = lienzo.load(single, device="cpu", dtype=torch.float32)
    assert from_file.family == "sdxl"
    for a, b in zip(
        from_folder.unet.state_dict().values(), from_file.unet.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    cond_a, cond_b = from_folder.encode_prompt(PROMPTS), from_file.encode_prompt(PROMPTS)
    assert torch.equal(cond_a.context, cond_b.context)
    assert torch.equal(cond_a.pooled, cond_b.pooled)


def test_load_casts_dtype():
    pipe = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in pipe.vae.parameters())
    assert not any(p.requires_grad for p in pipe.unet.parameters())


def test_sdxl_size_embedding_width_comes_from_the_model(tmp_path):
    folder = tiny_pipeline_folder("sdxl", time_embed_dim=8)
    files = lienzo.io.read_model(folder)
    single = lienzo.io.write_model(files, tmp_path / "dim8.safetensors")
    bare = tmp_path / "bare.safetensors"
    write_safetensors(bare, join_single_file(files))
    assert read_safetensors_metadata(bare) == {}
    for path in (folder, single, bare):
        pipe = lienzo.load(path, device="cpu", dtype=torch.float32, cache=False)
        assert pipe.spec.unet.addition_time_embed_dim == 8, path.name
        (image,) = pipe.generate("x", steps=2, width=64, height=64, seed=0, progress=False)
        assert image.size == (64, 64)
