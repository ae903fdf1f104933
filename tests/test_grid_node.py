"""The LienzoGrid graph node: an X/Y plot of the built-in model written under the output folder's grid/,
the grid as the node's UI image, progress per cell, and a bad axis refused before any image."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lienzo.graph import ExecutionHooks, Executor, GraphEnvironment, NodeExecutionError
from lienzo.io.library import BUILTIN_NAME, ModelLibrary

PROMPT = "a red square on a white background"


def grid_prompt(x_axis: str, y_axis: str) -> dict:
    settings = {"seed": 1, "steps": 1, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal"}
    return {
        "model": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BUILTIN_NAME}},
        "grid": {
            "class_type": "LienzoGrid",
            "inputs": {"model": ["model", 0], "text": PROMPT, "negative": "", "x_axis": x_axis,
                       "y_axis": y_axis, "z_axis": "", **settings, "width": 64, "height": 64,
                       "filename_prefix": "plot"},
        },
    }  # fmt: skip


class Progress(ExecutionHooks):
    def __init__(self):
        self.values = []

    def progress(self, prompt_id, node_id, value, maximum):
        self.values.append((value, maximum))


def test_the_grid_node_writes_the_grid_and_each_cell(tmp_path: Path):
    environment = GraphEnvironment(
        ModelLibrary(tmp_path / "models"), tmp_path / "in", tmp_path / "out", tmp_path / "t"
    )
    hooks = Progress()
    ui = Executor(environment).execute(grid_prompt("cfg=3,7", "seed=1,2"), prompt_id="g", hooks=hooks)
    (entry,) = ui["grid"]["images"]
    assert entry == {"filename": "grid.png", "subfolder": "grid/plot_00001", "type": "output"}
    folder = tmp_path / "out" / "grid" / "plot_00001"
    with Image.open(folder / "grid.png") as drawn:
        assert drawn.width > 2 * 64 and drawn.height > 2 * 64
    cells = sorted(path.name for path in (folder / "images").iterdir())
    assert cells == ["00001-x0-y0-z0.png", "00002-x1-y0-z0.png", "00003-x0-y1-z0.png", "00004-x1-y1-z0.png"]
    assert hooks.values == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_bad_axis_value_fails_before_any_image(tmp_path: Path):
    environment = GraphEnvironment(
        ModelLibrary(tmp_path / "models"), tmp_path / "in", tmp_path / "out", tmp_path / "t"
    )
    with pytest.raises(NodeExecutionError, match="cfg") as raised:
        Executor(environment).execute(grid_prompt("cfg=3,lots", ""), prompt_id="bad")
    assert "Y axis" not in raised.value.message
    assert not (tmp_path / "out" / "grid").exists()
