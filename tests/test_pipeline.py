"""The public contract of `lienzo.load` against diffusers' reference pipelines on identical tiny weights."""

from __future__ import annotations

import pytest
import torch

import lienzo
from lienzo.models.unet import sdxl_vector_conditioning
from tiny_models import FAMILIES, SDXL_TIME_IDS, tiny_pipeline_folder

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PROMPTS = ["a red circle in the top left on a blue background", "a small green square"]
TOLERANCE = 1e-4


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


def test_load_detects_family(family):
    pipe = lienzo.load(tiny_pipeline_folder(family), device="cpu")
    assert isinstance(pipe, lienzo.Pipeline)
    assert pipe.family == family
    assert pipe.prediction == ("v" if family == "sd2-v" else "eps")


def test_unet_matches_diffusers(family):
    folder = tiny_pipeline_folder(family)
    pipe = lienzo.load(folder, device="cpu")
    reference = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, pipe.spec.unet.in_channels, 16, 16, generator=generator)
    t = torch.tensor([999.0, 17.0])
    context = torch.randn(2, 77, pipe.spec.unet.context_dim, generator=generator)
    extra, y = {}, None
    if family in SDXL_TIME_IDS:
        pooled = torch.randn(2, pipe.spec.text_encoders[-1].config.projection_dim, generator=generator)
        time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0][: SDXL_TIME_IDS[family]]] * 2)
        extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
        y = sdxl_vector_conditioning(pooled, time_ids)
    with torch.no_grad():
        expected = reference(x, t, context, **extra).sample
        actual = pipe.unet(x, t, context, y=y)
    assert max_error(actual, expected) < TOLERANCE


def test_vae_matches_diffusers(family):
    folder = tiny_pipeline_folder(family)
    pipe = lienzo.load(folder, device="cpu")
    reference = diffusers.AutoencoderKL.from_pretrained(folder / "vae").eval()
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected_mean = reference.encode(images).latent_dist.mean
        expected_images = reference.decode(expected_mean).sample
        actual_mean = pipe.vae.encode(images).mean
        actual_images = pipe.vae.decode(actual_mean)
    assert max_error(actual_mean, expected_mean) < TOLERANCE
    assert max_error(actual_images, expected_images) < TOLERANCE
    assert pipe.latent_scale == reference.config.scaling_factor


def reference_pipeline(family: str):
    folder = tiny_pipeline_folder(family)
    if family.startswith("sdxl-refiner"):
        return diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(folder)
    if family.startswith("sdxl"):
        return diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    return diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)


def sd_reference_context(reference, clip_skip: int) -> torch.Tensor:
    """SD 1.x/2.x prompt embeddings as diffusers computes them, clip skip included.

    diffusers' own clip-skip branch reads `text_encoder.text_model`, which transformers 5's CLIPTextModel
    no longer has, so for clip_skip > 1 the same formula is applied here: hidden state -clip_skip (A1111
    numbering, diffusers' clip_skip - 1) passed through the final layer norm.
    """
    if clip_skip == 1:
        return reference.encode_prompt(PROMPTS, "cpu", 1, False)[0]
    ids = reference.tokenizer(
        PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    encoder = reference.text_encoder
    hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
    return encoder.final_layer_norm(hidden)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sd2-v", "sdxl", "sdxl-refiner"])
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_encode_prompt_matches_reference_pipeline(family, clip_skip):
    pipe = lienzo.load(tiny_pipeline_folder(family), device="cpu")
    reference = reference_pipeline(family)
    cond = pipe.encode_prompt(PROMPTS, clip_skip=clip_skip)
    skip = None if clip_skip == 1 else clip_skip - 1
    with torch.no_grad():
        if family.startswith("sdxl"):
            context, _, pooled, _ = reference.encode_prompt(
                PROMPTS, device="cpu", do_classifier_free_guidance=False, clip_skip=skip
            )
            assert max_error(cond.pooled, pooled) < TOLERANCE
        else:
            context = sd_reference_context(reference, clip_skip)
            assert cond.pooled is None
    assert cond.context.shape == context.shape
    assert max_error(cond.context, context) < TOLERANCE


def test_sd1_context_is_clip_last_hidden_state():
    folder = tiny_pipeline_folder("sd1")
    pipe = lienzo.load(folder, device="cpu")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoder = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    ids = tokenizer(
        PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        expected = encoder(ids).last_hidden_state
    assert max_error(pipe.encode_prompt(PROMPTS).context, expected) < TOLERANCE


def test_long_prompt_is_chunked():
    pipe = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu")
    long_prompt = " ".join(["red circle"] * 60)
    cond = pipe.encode_prompt([long_prompt, "a blue square"])
    assert cond.context.shape == (2, 154, pipe.spec.unet.context_dim)


def test_single_file_round_trip_loads_identically(tmp_path):
    folder = tiny_pipeline_folder("sdxl")
    single = tmp_path / "tiny-sdxl.safetensors"
    lienzo.io.write_model(lienzo.io.read_model(folder), single, format="single-file")
    from_folder = lienzo.load(folder, device="cpu")
    from_file = lienzo.load(single, device="cpu")
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
