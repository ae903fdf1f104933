"""Shapes scorer: ground truth scores 100 %, every kind of wrong image is rejected; evaluation and its CLI."""

import argparse
import itertools
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import lienzo.cli.eval
from lienzo.cli.eval import add_eval_arguments, run_eval
from lienzo.errors import InvalidArgumentError
from lienzo.worlds.evaluate import (
    CATEGORIES,
    contact_sheet,
    evaluate,
    evaluation_prompts,
    prompt_category,
)
from lienzo.worlds.scorer import ExpectedObject, detect_scene, label_regions, parse_prompt, score
from lienzo.worlds.shapes import (
    CELLS,
    COLOURS,
    HELD_OUT_PAIRS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    boxes_apart,
    caption,
    render,
    sample_scene,
)


def render_prompt(prompt: str, seed: int = 0) -> Image.Image:
    """The ground-truth image of a full caption (every size and position named)."""
    expected = parse_prompt(prompt)
    objects = tuple(SceneObject(obj.colour, obj.shape, obj.size, obj.cell) for obj in expected.objects)
    return render(Scene(expected.background, objects))


def random_scenes(count, seed, **kwargs):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, shapes=SHAPES, allow_held_out=True, **kwargs) for _ in range(count)]


def test_parse_prompt_reads_full_and_short_captions():
    scene = parse_prompt(
        "a large red circle on the left and an orange cross in the top right on an orange background"
    )
    assert scene.background == "orange"
    assert scene.objects == (
        ExpectedObject("red", "circle", "large", "left"),
        ExpectedObject("orange", "cross", None, "top right"),
    )
    assert parse_prompt("A small white star on a black background.").objects == (
        ExpectedObject("white", "star", "small", None),
    )


@pytest.mark.parametrize(
    "prompt",
    [
        "a red circle",
        "a pink circle on a blue background",
        "a red circle on the moon on a blue background",
        "",
    ],
)
def test_unreadable_prompts_say_what_to_write(prompt):
    with pytest.raises(InvalidArgumentError, match="write"):
        parse_prompt(prompt)


def test_ground_truth_renders_score_fully_correct():
    scenes = random_scenes(250, seed=0, objects=1) + random_scenes(250, seed=1, objects=2)
    objects = [obj for scene in scenes for obj in scene.objects]
    assert {o.colour for o in objects} == set(COLOURS) and {o.shape for o in objects} == set(SHAPES)
    assert {o.size for o in objects} == set(SIZES) and {o.cell for o in objects} == set(CELLS)
    rng = np.random.default_rng(2)
    for scene in scenes:
        image = render(scene)
        full = score(caption(scene), image)
        assert full.matched, (caption(scene), full.detected)
        assert all(m.size and m.position for m in full.objects)
        assert score(caption(scene, rng, drop_size=0.5, drop_position=0.5), image).matched


def test_detected_scene_measures_the_object():
    scene = Scene("green", (SceneObject("purple", "triangle", "large", "bottom right", -3, 2, -1),))
    detected = detect_scene(render(scene))
    assert detected.background == "green"
    (found,) = detected.objects
    assert (found.colour, found.shape, found.size, found.cell) == (
        "purple",
        "triangle",
        "large",
        "bottom right",
    )
    left, top, right, bottom = found.box
    assert (
        abs(left - 81.5) <= 1
        and abs(top - 86.5) <= 1
        and abs(right - 120.5) <= 1
        and abs(bottom - 125.5) <= 1
    )
    assert found.centroid[1] > (top + bottom) / 2


def test_scores_survive_mild_noise_and_blur():
    rng = np.random.default_rng(3)
    for index, scene in enumerate(random_scenes(60, seed=4)):
        if any(obj.shape in ("star", "heart") for obj in scene.objects):
            continue
        image = render(scene)
        noisy = np.clip(np.asarray(image) + rng.normal(0, 8, (128, 128, 3)), 0, 255).astype(np.uint8)
        assert score(caption(scene), Image.fromarray(noisy)).matched, index
        assert score(caption(scene), image.filter(ImageFilter.GaussianBlur(1))).matched, index


def _other(values, current, rng):
    choices = [value for value in values if value != current]
    return choices[rng.integers(len(choices))]


def _wrong_variants(scene: Scene, rng):
    """One modified scene per kind of mistake, each rendered from a changed scene."""
    first, others = scene.objects[0], scene.objects[1:]
    colours = [c for c in COLOURS if c != scene.background]
    free_cells = [c for c in CELLS if c not in {o.cell for o in scene.objects}]
    yield (
        "colour",
        replace(scene, objects=(replace(first, colour=_other(colours, first.colour, rng)), *others)),
    )
    yield "shape", replace(scene, objects=(replace(first, shape=_other(SHAPES, first.shape, rng)), *others))
    yield "size", replace(scene, objects=(replace(first, size=_other(SIZES, first.size, rng)), *others))
    moved = replace(first, cell=free_cells[rng.integers(len(free_cells))], dx=0, dy=0)
    yield "position", replace(scene, objects=(moved, *others))
    yield "missing", replace(scene, objects=scene.objects[:-1])
    extra = SceneObject(colours[rng.integers(len(colours))], "square", "small", free_cells[0])
    yield "extra", replace(scene, objects=(*scene.objects, extra))
    taken = {scene.background} | {o.colour for o in scene.objects}
    yield "background", replace(scene, background=_other([c for c in COLOURS if c not in taken], None, rng))


def _placed_by_the_rules(scene: Scene) -> bool:
    return all(boxes_apart(a, b) for a, b in itertools.combinations(scene.objects, 2))


def test_wrong_images_are_rejected_for_the_right_reason():
    rng = np.random.default_rng(5)
    scenes = random_scenes(20, seed=6, objects=2) + random_scenes(20, seed=7, objects=1)
    checked = {}
    for scene in scenes:
        prompt = caption(scene)
        for kind, wrong in _wrong_variants(scene, rng):
            if not _placed_by_the_rules(wrong):
                continue
            result = score(prompt, render(wrong))
            assert not result.matched, (kind, prompt, result.detected)
            first = result.objects[0]
            reason = {
                "colour": not first.colour,
                "shape": not first.shape,
                "size": first.size is False,
                "position": first.position is False,
                "missing": not result.count,
                "extra": not result.count,
                "background": not result.background,
            }[kind]
            assert reason, (kind, prompt, result)
            checked[kind] = checked.get(kind, 0) + 1
    assert all(checked[kind] >= 25 for kind in checked) and len(checked) == 7, checked


def test_regions_are_four_connected_and_split_by_colour():
    indices = np.zeros((6, 6), dtype=np.int64)
    indices[0:2, 0:2] = 1
    indices[2:4, 2:4] = 1
    indices[4:6, 0:3] = 2
    indices[4:6, 4:6] = 1
    labels = label_regions(indices, indices != 0)
    assert len({labels[0, 0], labels[2, 2], labels[4, 0], labels[4, 4]}) == 4
    assert (labels[indices == 0] == -1).all() and labels[1, 1] == labels[0, 0] == 0


def test_scoring_is_fast():
    scenes = random_scenes(40, seed=8)
    images = [render(scene) for scene in scenes]
    prompts = [caption(scene) for scene in scenes]
    score(prompts[0], images[0])
    start = time.perf_counter()
    for prompt, image in zip(prompts, images, strict=True):
        score(prompt, image)
    assert (time.perf_counter() - start) / len(images) < 0.025


def test_evaluation_prompts_are_fixed_and_of_their_kind():
    for kind in CATEGORIES:
        prompts = evaluation_prompts(30, seed=3, kind=kind)
        assert prompts == evaluation_prompts(30, seed=3, kind=kind) and len(prompts) == 30
        assert {prompt_category(p) for p in prompts} == {kind}
    held_out = [parse_prompt(p).objects[0] for p in evaluation_prompts(60, seed=0, kind="held_out")]
    assert {(o.colour, o.shape) for o in held_out} == HELD_OUT_PAIRS
    assert evaluation_prompts(10, seed=1) != evaluation_prompts(10, seed=2)
    with pytest.raises(InvalidArgumentError, match="single"):
        evaluation_prompts(3, kind="triple")


def test_evaluate_reports_per_category_and_attribute():
    prompts = [p for kind in CATEGORIES for p in evaluation_prompts(8, seed=0, kind=kind)]
    seeds = list(range(len(prompts)))
    perfect = evaluate(render_prompt, prompts, seeds)
    assert all(perfect.accuracy(kind) == 1.0 for kind in CATEGORIES)
    assert set(perfect.attribute_accuracy().values()) == {1.0}

    def blank(prompt, seed):
        return render(Scene(parse_prompt(prompt).background))

    empty = evaluate(blank, prompts, seeds)
    assert empty.accuracy() == 0.0
    attributes = empty.attribute_accuracy("double")
    assert attributes["background"] == 1.0 and attributes["count"] == 0.0 and attributes["shape"] == 0.0
    table = empty.table().splitlines()
    assert len(table) == 5 and table[-1].split()[:3] == ["all", "24", "0.0%"]
    with pytest.raises(InvalidArgumentError, match="seed"):
        evaluate(render_prompt, prompts, seeds[:-1])


def test_contact_sheet_shows_images_and_marks():
    prompts = evaluation_prompts(5, seed=0, kind="double")
    images = [render_prompt(p) for p in prompts]
    sheet = contact_sheet(images, prompts, [True, False, True, True, False], columns=3)
    assert sheet.width == 3 * 132 and sheet.height > 2 * 132
    pixels = np.asarray(sheet).reshape(-1, 3)
    assert ((pixels == (20, 150, 40)).all(axis=1)).any() and ((pixels == (200, 30, 30)).all(axis=1)).any()
    with pytest.raises(InvalidArgumentError):
        contact_sheet(images, prompts[:-1], [True] * 5)


class GroundTruthPipeline:
    def generate(self, prompt, *, seed=None, progress=True):
        assert progress is False
        return [render_prompt(prompt, seed)]


def parse_eval_args(argv):
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args(argv)


def test_eval_command_scores_ground_truth_fully(tmp_path, monkeypatch, capsys):
    loaded = []
    monkeypatch.setattr(
        lienzo.cli.eval,
        "load",
        lambda *args, **kwargs: loaded.append((args, kwargs)) or GroundTruthPipeline(),
    )
    out = tmp_path / "eval"
    args = parse_eval_args(
        ["shapes", "--model", str(tmp_path), "--prompts", "6", "--seed", "4", "--out", str(out)]
        + ["--dtype", "fp32"]
    )
    assert run_eval(args) == 0
    assert loaded == [((tmp_path,), {"device": None, "dtype": torch.float32})]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines[1:5]] == [
        ["single", "6", "100.0%"],
        ["double", "6", "100.0%"],
        ["held_out", "6", "100.0%"],
        ["all", "18", "100.0%"],
    ]
    sheets = sorted(path.name for path in out.iterdir())
    assert sheets == [f"contact_sheet_{kind}.png" for kind in sorted(CATEGORIES)]
    assert Image.open(out / "contact_sheet_single.png").size[0] == 6 * 132


def test_eval_command_refuses_bad_output_and_counts(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InvalidArgumentError, match="--out"):
        run_eval(parse_eval_args(["shapes", "--out", str(blocker / "sub")]))
    with pytest.raises(InvalidArgumentError, match="--prompts"):
        run_eval(parse_eval_args(["shapes", "--prompts", "0", "--out", str(tmp_path)]))
