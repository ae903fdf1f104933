"""The built-in model's recipe: its datasets, the pre-encoded objective, and the whole recipe in miniature."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import lienzo
from lienzo.errors import InvalidArgumentError
from lienzo.io.library import BUILTIN_NAME
from lienzo.models.clip import CLIPTextModel
from lienzo.models.unet import UNetModel
from lienzo.models.vae import AutoencoderKL
from lienzo.recipes import RECIPES, ShapesRecipe, run_recipe
from lienzo.recipes.shapes import vae_crops
from lienzo.recipes.shapes_data import LatentPool, RandomCrops, encode_pool
from lienzo.training import LatentDiffusionObjective, train_clip_tokenizer
from lienzo.worlds.codec_shapes import CodecShapesDataset
from lienzo.worlds.dataset import ShapesDataset, caption_corpus, scene_and_caption
from lienzo.worlds.scorer import parse_prompt
from test_cli import assert_one_error_line, run_cli


@pytest.fixture(scope="module")
def miniature_run(tmp_path_factory) -> Path:
    """One miniature recipe run through the CLI, shared by the tests that read its output."""
    out = tmp_path_factory.mktemp("recipe") / "run"
    result = run_cli("train", "recipe", "shapes", "--out", out, "--miniature", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "model written to" in result.stdout
    return out


def miniature_parts():
    """The miniature recipe with a random VAE, a small trained tokenizer and a matching text encoder."""
    torch.manual_seed(0)
    recipe = ShapesRecipe.miniature()
    vae = AutoencoderKL(recipe.vae).eval()
    tokenizer = train_clip_tokenizer(caption_corpus(100), 600)
    return (
        recipe,
        vae,
        tokenizer,
        CLIPTextModel(replace(recipe.text_encoder, vocab_size=len(tokenizer.vocab))),
    )


def test_random_crops_are_deterministic_and_sized():
    crops = RandomCrops(ShapesDataset(), 48, seed=3)
    first, caption = crops[5]["image"], crops[5]["caption"]
    assert first.shape == (3, 48, 48)
    assert torch.equal(first, crops[5]["image"]) and caption == crops[5]["caption"]
    assert caption == ShapesDataset()[5]["caption"], "the crop keeps the item's other values"
    assert not torch.equal(first, crops[6]["image"])


def test_latent_pool_recaptions_each_visit_of_a_scene():
    config = ShapesRecipe().data
    moments = torch.randn(4, 8, 2, 2).half()
    pool = LatentPool(moments, config)
    latent, text = pool[1]["image"], pool[1]["caption"]
    assert torch.equal(latent, moments[1].float()) and isinstance(text, str)
    visits = {pool[1 + 4 * k]["caption"] for k in range(12)}
    assert len(visits) > 1, "the same scene should get captions with different dropped parts"
    scenes = {parse_prompt(caption).background for caption in visits}
    assert len(scenes) == 1, "every visit describes the same scene"


def test_latent_pool_two_object_share_picks_two_object_scenes_that_often():
    config = ShapesRecipe().data
    moments = torch.arange(200, dtype=torch.float16).reshape(200, 1, 1, 1).expand(200, 8, 2, 2)
    pool = LatentPool(moments, config, two_object_share=0.8)
    draws = [(item["image"], item["caption"]) for item in (pool[index] for index in range(1000))]
    two = [len(parse_prompt(text).objects) == 2 for _, text in draws]
    assert 0.75 < sum(two) / len(two) < 0.85
    for latent, text in draws[:50]:
        scene_index = int(latent[0, 0, 0])
        expected = len(scene_and_caption(config, scene_index)[0].objects)
        assert len(parse_prompt(text).objects) == expected, "the caption belongs to the drawn latent"
    again = LatentPool(moments, config, two_object_share=0.8)
    assert [again[index]["caption"] for index in range(20)] == [text for _, text in draws[:20]]


def test_latent_pool_two_object_share_needs_both_kinds_of_scene():
    config = ShapesRecipe().data
    singles = [i for i in range(20) if len(scene_and_caption(config, i)[0].objects) == 1]
    assert singles[0] > 0, "scene 0 has two objects, so a one-scene pool lacks one-object scenes"
    with pytest.raises(InvalidArgumentError, match="both one- and two-object"):
        LatentPool(torch.zeros(1, 8, 2, 2).half(), config, two_object_share=0.5)


def test_encoded_inputs_give_the_same_loss_as_images():
    recipe, vae, tokenizer, text = miniature_parts()
    unet = UNetModel(recipe.unet)
    batch = ShapesDataset().batch(2)
    with torch.no_grad():
        posterior = vae.encode(batch["image"])
    moments = torch.cat([posterior.mean, posterior.logvar], dim=1)
    losses = []
    for encoded, inputs in ((False, batch["image"]), (True, moments)):
        objective = LatentDiffusionObjective(unet, vae, text, tokenizer, encoded_inputs=encoded)
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            losses.append(objective.loss({**batch, "image": inputs}, generator, {}))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)


def test_encode_pool_matches_the_vae_posterior():
    torch.manual_seed(0)
    vae = AutoencoderKL(ShapesRecipe.miniature().vae).eval()
    config = ShapesRecipe().data
    pool = encode_pool(vae, config, 3, batch_size=2)
    assert pool.shape[0] == 3 and pool.dtype == torch.float16
    images = torch.stack([ShapesDataset(config)[index]["image"] for index in range(3)])
    with torch.no_grad():
        posterior = vae.encode(images)
    expected = torch.cat([posterior.mean, posterior.logvar], dim=1)
    # the pool is encoded under bf16 autocast where the CPU has it: within bf16 rounding of fp32
    torch.testing.assert_close(pool.float(), expected, rtol=0.05, atol=0.1)
    assert not torch.allclose(pool[0].float(), expected[1], rtol=0.05, atol=0.1), "scenes stay in order"


def test_miniature_recipe_makes_a_loadable_model(miniature_run):
    model = miniature_run / "model"
    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for phase in ("diffusion", "binding"):
        assert (miniature_run / phase / "loss.csv").is_file()
        assert (miniature_run / phase / "loss.png").is_file()
        assert list((miniature_run / phase / "samples").glob("step_*.png"))
    pipe = lienzo.load(model)
    assert pipe.spec.resolution == 128
    scale = json.loads((model / "vae" / "config.json").read_text())["scaling_factor"]
    assert pipe.vae.config.scaling_factor == pytest.approx(scale) and scale != pytest.approx(0.18215)
    image = pipe.generate("a red circle on a blue background", seed=1, steps=3, progress=False)[0]
    assert image.size == (128, 128)


def test_resuming_a_finished_run_changes_nothing(miniature_run):
    weights = miniature_run / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.read_bytes()
    run_recipe(miniature_run, RECIPES[BUILTIN_NAME].in_miniature(), resume=True, progress=False)
    assert weights.read_bytes() == before


def test_a_used_folder_needs_resume(miniature_run):
    with pytest.raises(InvalidArgumentError, match="--resume"):
        run_recipe(miniature_run, RECIPES[BUILTIN_NAME].in_miniature(), progress=False)
    assert_one_error_line(
        run_cli("train", "recipe", "shapes", "--out", miniature_run, "--miniature"), "--resume"
    )


def test_an_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_cli("train", "recipe", "shapes", "--out", blocker / "run", "--miniature", "--quiet")
    assert_one_error_line(result, "--out")


def test_offset_noise_moves_whole_channels():
    recipe, vae, tokenizer, text = miniature_parts()
    latents = torch.zeros(64, 4, 8, 8)
    moments = torch.cat([latents, torch.full_like(latents, -30.0)], dim=1)
    seen = []

    def recording_unet(x, t, cond):
        seen.append(x)
        return torch.zeros_like(x)

    means = {}
    for offset in (0.0, 1.0):
        objective = LatentDiffusionObjective(
            UNetModel(recipe.unet), vae, text, tokenizer, encoded_inputs=True, offset_noise=offset
        )
        batch = {"image": moments, "caption": [""] * 64}
        objective.loss(batch, torch.Generator().manual_seed(3), {"unet": recording_unet})
        means[offset] = seen[-1].mean(dim=(2, 3)).std().item()
    assert means[0.0] < 0.3 < 0.7 < means[1.0], means


def test_min_snr_gamma_weights_the_loss_per_sample():
    recipe, vae, tokenizer, text = miniature_parts()
    moments = torch.cat([torch.randn(8, 4, 8, 8), torch.full((8, 4, 8, 8), -30.0)], dim=1)
    unet = UNetModel(recipe.unet)
    losses = {}
    for gamma in (None, 1e9, 0.5):
        objective = LatentDiffusionObjective(
            unet, vae, text, tokenizer, encoded_inputs=True, caption_dropout=0.0, min_snr_gamma=gamma
        )
        with torch.no_grad():
            batch = {"image": moments, "caption": [""] * 8}
            losses[gamma] = float(objective.loss(batch, torch.Generator().manual_seed(4), {}))
    assert losses[1e9] == pytest.approx(losses[None], rel=1e-5)
    assert losses[0.5] < 0.9 * losses[None]


def test_shapes_v2_recipe_in_miniature_has_a_16_channel_latent_and_a_codec_vae(tmp_path):
    recipe = RECIPES["shapes-v2"]
    assert (recipe.vae.embed_dim, recipe.unet.in_channels, recipe.unet.out_channels) == (16, 16, 16)
    assert recipe.decoder_edge_weight == 10.0 and ShapesRecipe().decoder_edge_weight == 0.0
    assert RECIPES["shapes-v1"] == ShapesRecipe() and RECIPES["shapes-v1"].vae.embed_dim == 4
    steps = [phase.training.steps for phase in recipe.diffusion]
    assert steps == [3000, 1500, 5000] and recipe.diffusion[-1].folder == "binding"
    generic = vae_crops(recipe, 0).dataset
    assert isinstance(generic, CodecShapesDataset) and generic.config.generic_share == 0.5
    assert isinstance(vae_crops(ShapesRecipe(), 0).dataset, ShapesDataset)
    out = tmp_path / "run"
    result = run_cli("train", "recipe", "shapes-v2", "--out", out, "--miniature", "--quiet")
    assert result.returncode == 0, result.stderr
    unet = json.loads((out / "model" / "unet" / "config.json").read_text())
    vae = json.loads((out / "model" / "vae" / "config.json").read_text())
    assert unet["in_channels"] == unet["out_channels"] == vae["latent_channels"] == 16
    pipe = lienzo.load(out / "model")
    assert pipe.family == "sd1" and pipe.spec.vae.embed_dim == 16
    (image,) = pipe.generate("a red circle", steps=2, width=64, height=64, seed=1, progress=False)
    assert image.size == (64, 64) and len(set(image.getdata())) > 1
