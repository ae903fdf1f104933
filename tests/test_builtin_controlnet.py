"""The built-in `shapes-v1-canny` ControlNet: found by name right after install, nothing at strength 0, and
the object drawn where the canny map's edges are (a reduced follow-rate measurement)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lienzo
from lienzo.io.library import ModelLibrary
from lienzo.pipelines.control_units import ControlUnit
from lienzo.pipelines.preprocessors import canny
from lienzo.recipes.controlnet_shapes import follow_rate, follow_scenes
from lienzo.worlds.shapes import render

FOLLOW_SCENES = 12
FOLLOW_THRESHOLD = 10 / 12
"""bench/controlnet_follow.py measured 97 / 100 scenes at the default 20 steps. At that rate 12 scenes fall
below 10 with a binomial probability of about 0.5 %; without the ControlNet the position alone is right
1 time in 9, so 10 of 12 by chance is out of reach (about 1e-8)."""


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield lienzo.load()
    torch.set_num_threads(threads)


def test_the_library_lists_it_and_it_loads_in_the_models_dtype(pipe):
    assert "shapes-v1-canny" in [entry.name for entry in ModelLibrary().list("controlnet")]
    controlnet = pipe.load_controlnet("shapes-v1-canny")
    assert controlnet.name == "shapes-v1-canny"
    assert next(controlnet.model.parameters()).dtype == pipe.dtype


def test_strength_zero_is_no_controlnet(pipe):
    controlnet = pipe.load_controlnet("shapes-v1-canny")
    edges = canny(render(follow_scenes(1)[0]))

    def drawn(*units) -> np.ndarray:
        image = pipe.generate(
            "a red circle on a blue background", seed=2, steps=6, controlnets=list(units), progress=False
        )
        return np.asarray(image[0])

    plain = drawn()
    assert np.array_equal(plain, drawn(ControlUnit(controlnet, edges, strength=0.0)))
    assert not np.array_equal(plain, drawn(ControlUnit(controlnet, edges)))


def test_the_object_lands_where_the_edges_are(pipe):
    rate, items = follow_rate(pipe, pipe.load_controlnet("shapes-v1-canny"), FOLLOW_SCENES)
    assert rate >= FOLLOW_THRESHOLD, [(item.prompt, item.expected, item.matched) for item in items]
