"""ControlNet preprocessors: canny edges on a shape's border, scribble strokes on drawn lines, invert as an
involution, option and kind errors, and `lienzo preprocess` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.preprocessors import PREPROCESSOR_OPTIONS, PREPROCESSORS, preprocess

SQUARE = (20, 16, 43, 47)
"""The filled rectangle's inclusive corners (left, top, right, bottom) on a 64x64 canvas."""


def rectangle_scene() -> Image.Image:
    image = Image.new("RGB", (64, 64), (30, 60, 200))
    ImageDraw.Draw(image).rectangle(SQUARE, fill=(240, 200, 20))
    return image


def border_band(width: int = 1) -> np.ndarray:
    """True within `width` pixels of the rectangle's outline, inside or outside."""
    left, top, right, bottom = SQUARE
    rows, columns = np.mgrid[0:64, 0:64]
    outer = (
        (columns >= left - width)
        & (columns <= right + width)
        & (rows >= top - width)
        & (rows <= bottom + width)
    )
    inner = (
        (columns >= left + width)
        & (columns <= right - width)
        & (rows >= top + width)
        & (rows <= bottom - width)
    )
    return outer & ~inner


def test_canny_edges_lie_exactly_on_the_border():
    control = preprocess("canny", rectangle_scene())
    edges = np.asarray(control)
    assert control.size == (64, 64) and control.mode == "RGB"
    assert set(np.unique(edges)) == {0, 255}
    on = edges[..., 0] == 255
    assert not (on & ~border_band(1)).any(), "an edge pixel lies off the rectangle's border"
    left, top, right, bottom = SQUARE
    for row in range(top + 2, bottom - 1):
        assert on[row, left - 1 : left + 1].any() and on[row, right : right + 2].any()
    for column in range(left + 2, right - 1):
        assert on[top - 1 : top + 1, column].any() and on[bottom : bottom + 2, column].any()


def test_canny_thresholds_decide_which_edges_survive():
    faint = Image.new("RGB", (64, 64), (100, 100, 100))
    ImageDraw.Draw(faint).rectangle(SQUARE, fill=(112, 112, 112))
    assert np.asarray(preprocess("canny", faint)).max() == 0
    assert np.asarray(preprocess("canny", faint, low_threshold=10, high_threshold=20)).max() == 255
    with pytest.raises(InvalidArgumentError, match="must not exceed"):
        preprocess("canny", faint, low_threshold=200, high_threshold=100)


def test_scribble_marks_drawn_lines_and_nothing_on_flat_paper():
    paper = Image.new("RGB", (64, 64), "white")
    assert np.asarray(preprocess("scribble", paper)).max() == 0
    ImageDraw.Draw(paper).line([(10, 32), (54, 32)], fill="black", width=2)
    strokes = np.asarray(preprocess("scribble", paper))[..., 0] == 255
    assert strokes[31:34, 12:52].all(axis=1).any()
    assert not strokes[:20].any() and not strokes[45:].any()


def test_invert_is_an_involution_and_none_keeps_the_image():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    once = preprocess("invert", image)
    assert np.array_equal(np.asarray(once), 255 - np.asarray(image))
    assert np.array_equal(np.asarray(preprocess("invert", once)), np.asarray(image))
    assert np.array_equal(np.asarray(preprocess("none", image)), np.asarray(image))


def test_unknown_kinds_and_foreign_options_are_errors():
    with pytest.raises(InvalidArgumentError) as caught:
        preprocess("hed", rectangle_scene())
    assert all(kind in str(caught.value) for kind in PREPROCESSORS)
    with pytest.raises(InvalidArgumentError, match="does not take low_threshold"):
        preprocess("scribble", rectangle_scene(), low_threshold=10)
    assert preprocess("scribble", rectangle_scene(), low_threshold=None).size == (64, 64)
    assert set(PREPROCESSOR_OPTIONS) == set(PREPROCESSORS)


def lienzo(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    command = [sys.executable, "-m", "lienzo.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)


def test_preprocess_command_writes_the_control_image(tmp_path):
    source, target = tmp_path / "scene.png", tmp_path / "edges.png"
    rectangle_scene().save(source)
    done = lienzo("preprocess", "canny", str(source), str(target), "--low-threshold", "50")
    assert done.returncode == 0, done.stderr
    with Image.open(target) as written:
        expected = preprocess("canny", rectangle_scene(), low_threshold=50)
        assert np.array_equal(np.asarray(written), np.asarray(expected))
    failed = lienzo(
        "preprocess", "depth", str(source), str(tmp_path / "depth.png"), "--models-dir", str(tmp_path)
    )
    assert failed.returncode == 1 and failed.stderr.startswith("error: ") and "Traceback" not in failed.stderr
    assert "model.safetensors" in failed.stderr and not (tmp_path / "depth.png").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["edges.png", "scene.png"]
