"""Shapes world: scene sampler, renderer, captions and the endless dataset."""

import re

import numpy as np
import pytest
import torch

from lienzo.errors import InvalidArgumentError
from lienzo.worlds.dataset import ShapesDataConfig, ShapesDataset, caption_corpus
from lienzo.worlds.shapes import (
    BASE_SHAPES,
    CANVAS,
    CELLS,
    COLOURS,
    HELD_OUT_PAIRS,
    PALETTE,
    POSITION_PHRASES,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    boxes_apart,
    caption,
    render,
    sample_scene,
)


def many_scenes(count, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, **kwargs) for _ in range(count)]


def test_full_caption_follows_the_grammar():
    scene = Scene(
        "orange",
        (SceneObject("red", "circle", "large", "left"), SceneObject("orange", "cross", "small", "top right")),
    )
    assert caption(scene) == (
        "a large red circle on the left and a small orange cross in the top right on an orange background"
    )
    bare = Scene("blue", (SceneObject("orange", "triangle", "small", "bottom"),))
    assert caption(bare, np.random.default_rng(0), drop_size=1.0, drop_position=1.0) == (
        "an orange triangle on a blue background"
    )


def test_articles_agree_with_the_next_word():
    rng = np.random.default_rng(1)
    captions = [caption(scene, rng) for scene in many_scenes(400, seed=1)]
    pairs = [pair for text in captions for pair in re.findall(r"\b(a|an) (\w+)", text)]
    assert {word for _, word in pairs} >= {"orange", "red", "small", "large"}
    for word_article, word in pairs:
        assert word_article == ("an" if word[0] in "aeiou" else "a"), (word_article, word)


def test_optional_parts_are_dropped_at_their_rates():
    rng = np.random.default_rng(2)
    scenes = many_scenes(600, seed=2, objects=1)
    captions = [caption(scene, rng, drop_size=0.3, drop_position=0.5) for scene in scenes]
    without_size = sum(not re.search(r"\b(small|large)\b", text) for text in captions) / len(captions)
    phrases = tuple(POSITION_PHRASES.values())
    without_position = sum(not any(p in text for p in phrases) for text in captions) / len(captions)
    assert 0.24 < without_size < 0.36
    assert 0.43 < without_position < 0.57
    both_kept = [
        text for text in captions if re.search(r"\b(small|large)\b", text) and any(p in text for p in phrases)
    ]
    assert both_kept


def test_held_out_pairs_never_appear_in_training_scenes():
    training = many_scenes(3000, seed=3)
    pairs = {(obj.colour, obj.shape) for scene in training for obj in scene.objects}
    assert not pairs & HELD_OUT_PAIRS
    assert len(pairs) == len(COLOURS) * len(BASE_SHAPES) - len(HELD_OUT_PAIRS)
    everything = many_scenes(3000, seed=3, allow_held_out=True)
    assert HELD_OUT_PAIRS <= {(obj.colour, obj.shape) for scene in everything for obj in scene.objects}


def test_scenes_cover_the_world_and_respect_its_rules():
    scenes = many_scenes(2000, seed=4)
    objects = [obj for scene in scenes for obj in scene.objects]
    assert {obj.shape for obj in objects} == set(BASE_SHAPES)
    assert {obj.colour for obj in objects} == set(COLOURS)
    assert {obj.size for obj in objects} == set(SIZES)
    assert {obj.cell for obj in objects} == set(CELLS)
    assert {len(scene.objects) for scene in scenes} == {1, 2}
    for scene in scenes:
        for obj in scene.objects:
            assert obj.colour != scene.background
            assert abs(obj.dx) <= 4 and abs(obj.dy) <= 4 and abs(obj.dsize) <= 2
            left, top, right, bottom = obj.box
            assert left >= 1 and top >= 1 and right <= CANVAS - 1 and bottom <= CANVAS - 1


def test_two_objects_never_share_a_cell_or_overlap():
    scenes = many_scenes(1500, seed=5, objects=2)
    both_large = 0
    for scene in scenes:
        first, second = scene.objects
        assert first.cell != second.cell
        assert boxes_apart(first, second)
        alone = [
            np.asarray(render(Scene(scene.background, (obj,)))) != PALETTE[scene.background]
            for obj in scene.objects
        ]
        assert not (alone[0].any(axis=-1) & alone[1].any(axis=-1)).any()
        both_large += first.size == second.size == "large"
    assert both_large > 200


def test_renderer_is_deterministic_and_exact_inside_objects():
    scene = Scene("blue", (SceneObject("yellow", "square", "large", "center", 3, -2, 1),))
    first, second = render(scene), render(scene)
    assert first.size == (CANVAS, CANVAS) and first.mode == "RGB"
    assert first.tobytes() == second.tobytes()
    pixels = np.asarray(first)
    assert tuple(pixels[0, 0]) == PALETTE["blue"]
    assert tuple(pixels[62, 67]) == PALETTE["yellow"]
    inside = (pixels == PALETTE["yellow"]).all(axis=-1)
    rows, columns = np.nonzero(inside)
    assert rows.max() - rows.min() + 1 in (40, 41) and columns.max() - columns.min() + 1 in (40, 41)
    assert render(many_scenes(1, seed=9)[0]).tobytes() == render(many_scenes(1, seed=9)[0]).tobytes()


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_renders_inside_its_box(shape):
    scene = Scene("black", (SceneObject("white", shape, "large", "center"),))
    filled = (np.asarray(render(scene)) != PALETTE["black"]).any(axis=-1)
    rows, columns = np.nonzero(filled)
    assert 38 <= max(rows.max() - rows.min(), columns.max() - columns.min()) + 1 <= 42
    assert rows.min() >= 43 and rows.max() <= 84 and columns.min() >= 43 and columns.max() <= 84


def test_dataset_is_deterministic_and_seeded():
    first, second = ShapesDataset(ShapesDataConfig(seed=7)), ShapesDataset(ShapesDataConfig(seed=7))
    other = ShapesDataset(ShapesDataConfig(seed=8))
    item = first[5]
    assert set(item) == {"image", "caption"}
    image, text = item["image"], item["caption"]
    assert image.shape == (3, CANVAS, CANVAS) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    assert torch.equal(image, second[5]["image"]) and text == second[5]["caption"]
    assert [other[i]["caption"] for i in range(8)] != [first[i]["caption"] for i in range(8)]
    small = ShapesDataset(ShapesDataConfig(seed=7, resolution=32))
    assert small[5]["image"].shape == (3, 32, 32) and small[5]["caption"] == text


def test_dataset_resumes_exactly_from_its_state():
    straight = ShapesDataset(ShapesDataConfig(seed=11))
    stream = iter(straight)
    seen = [next(stream) for _ in range(4)]
    batch = straight.batch(3)
    images, captions = batch["image"], batch["caption"]
    state = straight.state_dict()
    expected = [next(stream) for _ in range(3)]
    resumed = ShapesDataset(ShapesDataConfig(seed=11))
    resumed.load_state_dict(state)
    again = iter(resumed)
    for item, want in zip([next(again) for _ in range(3)], expected, strict=True):
        assert torch.equal(item["image"], want["image"]) and item["caption"] == want["caption"]
    assert torch.equal(images[0], straight[4]["image"])
    assert captions == [straight[i]["caption"] for i in (4, 5, 6)]
    assert seen[0]["caption"] == straight[0]["caption"]
    with pytest.raises(InvalidArgumentError, match="seed"):
        ShapesDataset(ShapesDataConfig(seed=12)).load_state_dict(state)


def test_ranks_split_one_stream_between_them():
    config = ShapesDataConfig(seed=13)
    single = ShapesDataset(config).batch(6)["caption"]
    rank0 = ShapesDataset(config, rank=0, world_size=2).batch(3)["caption"]
    rank1 = ShapesDataset(config, rank=1, world_size=2).batch(3)["caption"]
    assert single == [rank0[0], rank1[0], rank0[1], rank1[1], rank0[2], rank1[2]]


def test_dataset_excludes_held_out_pairs_and_caption_corpus_is_stable():
    dataset = ShapesDataset(ShapesDataConfig(seed=14))
    pairs = {(o.colour, o.shape) for i in range(500) for o in dataset.example(i).scene.objects}
    assert not pairs & HELD_OUT_PAIRS
    corpus = caption_corpus(300, seed=1)
    assert corpus == caption_corpus(300, seed=1) and len(corpus) == 300
    words = {word for text in corpus for word in text.split()}
    assert set(COLOURS) | set(BASE_SHAPES) | {"an", "background"} <= words
