"""The generic shapes that teach the VAE decoder to be a general codec: deterministic, in the world's
palette, never the reserved shapes, and mixed with the base world at the configured share."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lienzo.models.vae import AutoencoderKL
from lienzo.recipes.shapes import ShapesRecipe, generalise_decoder
from lienzo.worlds.codec_shapes import (
    GENERIC_KINDS,
    STAR_POLYGON_POINTS,
    CodecDataConfig,
    CodecShapesDataset,
    _star_polygon,
    draw_generic,
    render_generic,
)
from lienzo.worlds.dataset import ShapesDataset
from lienzo.worlds.shapes import PALETTE
from test_cli import assert_one_error_line, run_cli


def test_generic_scenes_are_deterministic_and_differ():
    first = np.asarray(render_generic(np.random.default_rng(3)))
    assert first.shape == (128, 128, 3)
    assert np.array_equal(first, np.asarray(render_generic(np.random.default_rng(3))))
    assert not np.array_equal(first, np.asarray(render_generic(np.random.default_rng(4))))


def test_generic_scenes_are_drawn_in_the_palette():
    palette = np.array(list(PALETTE.values()))
    for seed in range(10):
        pixels = np.asarray(render_generic(np.random.default_rng(seed))).reshape(-1, 3).astype(int)
        distance = np.abs(pixels[:, None, :] - palette[None]).sum(axis=2).min(axis=1)
        assert np.mean(distance == 0) > 0.9, "all but the anti-aliased edges are palette colours"


def test_star_polygons_never_have_five_points():
    assert 5 not in STAR_POLYGON_POINTS
    for seed in range(200):
        vertices = _star_polygon(np.random.default_rng(seed))
        assert len(vertices) // 2 in STAR_POLYGON_POINTS and len(vertices) % 2 == 0
        outer = [math.hypot(*v) for v in vertices[::2]]
        inner = [math.hypot(*v) for v in vertices[1::2]]
        assert min(outer) > max(inner), "alternate vertices are the points and the notches"


@pytest.mark.parametrize("kind", GENERIC_KINDS)
def test_each_kind_fills_its_box(kind):
    image = Image.new("RGB", (128, 128), PALETTE["blue"])
    draw_generic(
        ImageDraw.Draw(image),
        np.random.default_rng(1),
        kind,
        (34, 34, 94, 94),
        PALETTE["red"],
        PALETTE["blue"],
    )
    mask = np.all(np.asarray(image) == PALETTE["red"], axis=2)
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert max(rows[-1] - rows[0], columns[-1] - columns[0]) >= 55, "the larger side fills the box"
    assert rows[0] >= 34 and columns[0] >= 34 and rows[-1] <= 94 and columns[-1] <= 94
    if kind == "ring":
        assert not mask[64, 64], "a ring has a hole of the background colour"


def test_the_mix_takes_generic_scenes_at_its_share_and_world_scenes_otherwise():
    data = CodecShapesDataset(CodecDataConfig(generic_share=0.3, seed=2))
    world = ShapesDataset()
    generic = [not torch.equal(data[i]["image"], world[i]["image"]) for i in range(200)]
    assert 0.2 < np.mean(generic) < 0.4
    assert torch.equal(data[7]["image"], data[7]["image"])
    assert all(data[i]["image"].shape == (3, 128, 128) for i in range(5))
    assert all(
        not torch.equal(data[i]["image"], world[i]["image"]) for i in range(50) if data[i]["caption"] == ""
    )


def test_the_recipe_stage_trains_the_decoder_and_leaves_the_encoder(tmp_path):
    torch.manual_seed(0)
    recipe = ShapesRecipe.miniature().with_decoder_generalisation(2)
    vae = AutoencoderKL(recipe.vae)
    before = {key: value.clone() for key, value in vae.state_dict().items()}
    tuned = generalise_decoder(recipe, vae, tmp_path / "generalisation", torch.device("cpu"), progress=False)
    after = tuned.state_dict()
    encoder = [key for key in before if key.startswith(("encoder.", "quant_conv."))]
    decoder = [key for key in before if key.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and decoder
    assert all(torch.equal(before[key], after[key]) for key in encoder), "the latents must not change"
    assert any(not torch.equal(before[key], after[key]) for key in decoder)
    assert (tmp_path / "generalisation" / "loss.csv").is_file()


def test_the_stage_is_off_in_the_shipped_recipe(tmp_path):
    recipe = ShapesRecipe.miniature()
    assert ShapesRecipe().decoder_generalisation is None and recipe.decoder_generalisation is None
    vae = AutoencoderKL(recipe.vae)
    before = {key: value.clone() for key, value in vae.state_dict().items()}
    generalise_decoder(recipe, vae, tmp_path / "generalisation", torch.device("cpu"), progress=False)
    assert all(torch.equal(before[key], value) for key, value in vae.state_dict().items())
    assert not (tmp_path / "generalisation").exists()
    stage = ShapesRecipe().with_decoder_generalisation(300).decoder_generalisation
    assert (stage.steps, stage.batch_size, stage.optim.learning_rate) == (300, 16, 2e-4)


def test_a_negative_step_count_is_a_clear_error(tmp_path):
    result = run_cli("train", "recipe", "shapes", "--out", tmp_path / "run", "--generalise-decoder", "-1")
    assert_one_error_line(result, "--generalise-decoder")
    assert not (tmp_path / "run").exists()
