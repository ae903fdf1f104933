"""Fine-tuning data for a new concept: one-object scenes of a reserved shape (`star`, `heart`), and the
prompts that test the concept afterwards."""

from __future__ import annotations

import numpy as np

from lienzo.errors import InvalidArgumentError
from lienzo.worlds.shapes import RESERVED_SHAPES, SIZES, Scene, caption, sample_scene

TEST_SEED = 1001


def concept_scenes(
    shape: str, count: int, seed: int = 0, sizes: tuple[str, ...] = tuple(SIZES)
) -> list[Scene]:
    """`count` one-object scenes of `shape` over every colour and position of the world and `sizes`."""
    if shape not in RESERVED_SHAPES:
        raise InvalidArgumentError(
            f"{shape!r} is not a reserved shape; use one of {', '.join(RESERVED_SHAPES)}"
        )
    rng = np.random.default_rng([seed, RESERVED_SHAPES.index(shape)])
    return [sample_scene(rng, objects=1, shapes=(shape,), sizes=sizes) for _ in range(count)]


def concept_test_scenes(shape: str, count: int) -> list[Scene]:
    """`count` one-object scenes of `shape` for scoring, drawn apart from any training folder's."""
    return concept_scenes(shape, count, seed=TEST_SEED)


def concept_prompts(shape: str, count: int, *, with_size: bool = True) -> list[str]:
    """The full captions (colour, size, position) of `concept_test_scenes`; without the size word when
    not `with_size`, so that a prompt asks for colour, shape and position only."""
    rng = None if with_size else np.random.default_rng(0)
    scenes = concept_test_scenes(shape, count)
    return [caption(scene, rng, drop_size=1.0, drop_position=0.0) for scene in scenes]
