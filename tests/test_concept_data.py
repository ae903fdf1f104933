"""Concept data for fine-tuning proofs: reserved-shape scenes, held-apart test scenes and their prompts."""

import pytest

from lienzo.errors import InvalidArgumentError
from lienzo.worlds.concept_data import concept_prompts, concept_scenes, concept_test_scenes
from lienzo.worlds.scorer import parse_prompt
from lienzo.worlds.shapes import SIZES


def test_concept_scenes_hold_one_object_of_the_reserved_shape_in_every_size():
    scenes = concept_scenes("star", 60)
    assert {len(scene.objects) for scene in scenes} == {1}
    assert {scene.objects[0].shape for scene in scenes} == {"star"}
    assert {scene.objects[0].size for scene in scenes} == set(SIZES)


def test_a_base_world_shape_is_refused():
    with pytest.raises(InvalidArgumentError, match="reserved shape"):
        concept_scenes("circle", 3)


def test_test_scenes_differ_from_a_training_folders_scenes():
    assert concept_test_scenes("star", 40) != concept_scenes("star", 40)


def test_prompts_name_every_attribute_and_open_size_prompts_drop_only_the_size():
    scenes = concept_test_scenes("star", 40)
    full = concept_prompts("star", 40)
    open_size = concept_prompts("star", 40, with_size=False)
    for scene, prompt, without in zip(scenes, full, open_size, strict=True):
        (obj,) = scene.objects
        expected = parse_prompt(prompt).objects[0]
        assert (expected.colour, expected.shape, expected.size, expected.cell) == (
            obj.colour,
            obj.shape,
            obj.size,
            obj.cell,
        )
        loose = parse_prompt(without).objects[0]
        assert (loose.colour, loose.shape, loose.size, loose.cell) == (obj.colour, obj.shape, None, obj.cell)
        assert not any(f" {size} " in without for size in SIZES)


def test_scenes_of_one_size_only():
    assert {scene.objects[0].size for scene in concept_scenes("star", 30, sizes=("small",))} == {"small"}
