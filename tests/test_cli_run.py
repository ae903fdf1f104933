"""`lienzo run` on the built-in model: a UI-format workflow with --set overrides, and validation errors
printed without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from lienzo.cli import main
from test_graph_nodes import UI_TXT2IMG, txt2img

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lienzo_run_applies_settings_and_prints_the_files(tmp_path, capsys):
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(UI_TXT2IMG))
    arguments = ["--output-dir", str(tmp_path / "out"), "--models-dir", str(tmp_path / "models"), "-q"]
    assert (
        main(["run", str(path), "--set", "3.seed=7", "--set", "3.steps=2", "--set", "5.width=64", *arguments])
        == 0
    )
    written = tmp_path / "out" / "ComfyUI_00001_.png"
    assert capsys.readouterr().out.split() == [str(written)]
    image = Image.open(written)
    assert json.loads(image.info["prompt"])["3"]["inputs"]["seed"] == 7
    assert json.loads(image.info["workflow"]) == UI_TXT2IMG
    assert image.size == (64, 128)


def test_lienzo_run_prints_validation_errors_without_a_traceback(tmp_path):
    prompt = txt2img()
    prompt["3"]["inputs"]["model"] = ["3", 0]
    prompt["5"]["inputs"]["width"] = 100000
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(prompt))
    done = subprocess.run(
        [sys.executable, "-m", "lienzo.cli", "run", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Prompt outputs failed validation" in done.stderr
    assert "node 3 (KSampler): Dependency cycle detected" in done.stderr
    assert "node 5 (EmptyLatentImage): Value 100000 bigger than max of 16384: width" in done.stderr
