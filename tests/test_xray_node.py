"""The LienzoXRay graph node: one x-ray of the built-in model written under the output folder's xray/, its
UI entry naming every file, the image passed on as an IMAGE, and progress and interruption between steps."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lienzo.graph import ExecutionHooks, ExecutionInterrupted, Executor, GraphEnvironment
from lienzo.io.library import BUILTIN_NAME, ModelLibrary

PROMPT = "a red square on a white background"


def xray_prompt() -> dict:
    settings = {"seed": 1, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal"}
    return {
        "model": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BUILTIN_NAME}},
        "xray": {
            "class_type": "LienzoXRay",
            "inputs": {"model": ["model", 0], "text": PROMPT, "negative": "", **settings, "width": 64,
                       "height": 64, "every": 1, "filename_prefix": "run"},
        },
        "save": {"class_type": "SaveImage", "inputs": {"images": ["xray", 0], "filename_prefix": "xr"}},
    }  # fmt: skip


def test_the_xray_node_writes_the_folder_and_lists_every_file(tmp_path: Path):
    environment = GraphEnvironment(
        ModelLibrary(tmp_path / "models"), tmp_path / "in", tmp_path / "out", tmp_path / "t"
    )
    executor = Executor(environment)
    first = executor.execute(xray_prompt(), prompt_id="first")
    entry = first["xray"]["xray"][0]
    folder = tmp_path / "out" / entry["subfolder"]
    assert entry["subfolder"] == "xray/run_00001"
    for name in ("image", "sigmas", "trajectory", "index"):
        assert (folder / entry[name]).is_file()
    words = [item["word"] for item in entry["maps"]]
    assert words == PROMPT.split()
    for item in entry["maps"]:
        assert (tmp_path / "out" / item["subfolder"] / item["filename"]).is_file()
    assert [word["text"] for word in entry["tokens"]["words"]] == words
    assert len(entry["schedule"]["sigmas"]) == 3
    assert first["save"]["images"][0]["filename"] == "xr_00001_.png"

    prompt = xray_prompt()
    prompt["xray"]["inputs"]["seed"] = 2
    second = executor.execute(prompt, prompt_id="second")
    assert second["xray"]["xray"][0]["subfolder"] == "xray/run_00002"


def test_the_xray_node_reports_each_step_and_stops_when_interrupted(tmp_path: Path):
    environment = GraphEnvironment(
        ModelLibrary(tmp_path / "models"), tmp_path / "in", tmp_path / "out", tmp_path / "t"
    )
    interrupt, steps = threading.Event(), []

    class StopAtStep3(ExecutionHooks):
        def progress(self, prompt_id, node_id, value, maximum):
            steps.append((node_id, value, maximum))
            if value == 3:
                interrupt.set()

    prompt = xray_prompt()
    prompt["xray"]["inputs"]["steps"] = 20
    executor = Executor(environment)
    with pytest.raises(ExecutionInterrupted) as caught:
        executor.execute(prompt, prompt_id="stop", hooks=StopAtStep3(), interrupt=interrupt)
    assert caught.value.node_id == "xray"
    assert steps == [("xray", 1, 20), ("xray", 2, 20), ("xray", 3, 20)]
    assert not (tmp_path / "out" / "xray").exists()
