"""T2I-Adapter through every route on the built-in model: the command line (`--controlnet FOLDER`), a
ComfyUI graph (ControlNetLoader by name) against pipe.generate, and an A1111 ControlNet unit over HTTP."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import diffusers
import numpy as np
import pytest
from PIL import Image

import lienzo
from lienzo.cli import main
from lienzo.graph import Executor, GraphEnvironment
from lienzo.io.library import BUILTIN_NAME, ModelLibrary
from lienzo.models.t2i_adapter import T2IAdapter
from lienzo.pipelines.metadata import read_parameters
from server_client import call, serve
from tiny_models import randomize_parameters, tiny_pipeline_folder

pytestmark = pytest.mark.usefixtures("one_thread")

BUILTIN_ADAPTER = {
    "adapter_type": "full_adapter_xl",
    "channels": [64, 128, 128, 128],
    "num_res_blocks": 1,
    "downscale_factor": 16,
}
"""An adapter with the built-in model's encoder widths (64, 128, 128; no attention at the first level)."""


@pytest.fixture(scope="module")
def builtin_files(tmp_path_factory) -> Path:
    """A models folder with a random adapter for the built-in model at controlnet/shapes-adapter, and a
    control image (a white square on black) in in/square.png."""
    root = tmp_path_factory.mktemp("builtin-adapter")
    adapter = diffusers.T2IAdapter(**BUILTIN_ADAPTER)
    randomize_parameters(adapter, 2)
    adapter.save_pretrained(root / "models" / "controlnet" / "shapes-adapter")
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[16:48, 16:48] = 255
    (root / "in").mkdir()
    Image.fromarray(pixels).save(root / "in" / "square.png")
    return root


def png_pixels(image) -> np.ndarray:
    """RGB pixels of an image or an image file, as floats."""
    image = image if isinstance(image, Image.Image) else Image.open(image)  # a path or a file object
    return np.asarray(image.convert("RGB"), dtype=float)


def test_command_line_runs_an_adapter_folder_on_the_builtin_model(builtin_files, tmp_path, capsys):
    adapter, square = (
        builtin_files / "models" / "controlnet" / "shapes-adapter",
        builtin_files / "in" / "square.png",
    )
    common = ["--size", "64x64", "--steps", "2", "--seed", "1", "-q", "--device", "cpu", "--dtype", "fp32"]
    unit = ["--controlnet", str(adapter), "--control-image", str(square)]
    assert main(["generate", "a red circle", *unit, *common, "-o", str(tmp_path / "with")]) == 0
    assert main(["generate", "a red circle", *common, "-o", str(tmp_path / "without")]) == 0
    (with_adapter,) = sorted((tmp_path / "with").glob("*.png"))
    (without,) = sorted((tmp_path / "without").glob("*.png"))
    assert np.abs(png_pixels(with_adapter) - png_pixels(without)).max() > 8
    assert 'ControlNet 0: "Module: none, Model: shapes-adapter, Weight: 1.0' in read_parameters(with_adapter)
    capsys.readouterr()
    tiny = ["--model", str(tiny_pipeline_folder("sd1"))]
    assert main(["generate", "a red circle", *unit, *tiny, *common, "-o", str(tmp_path / "bad")]) != 0
    assert "T2I-Adapter for SDXL" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_graph_loader_and_library_names_take_an_adapter(builtin_files):
    """ComfyUI's ControlNetLoader (and A1111 units, which name models the same way) load the adapter by its
    name in the models folder; the graph's image equals pipe.generate's with the same unit."""
    environment = GraphEnvironment(
        ModelLibrary(builtin_files / "models"),
        builtin_files / "in",
        builtin_files / "out",
        builtin_files / "tmp",
    )
    settings = {
        "seed": 5,
        "steps": 2,
        "cfg": 5.0,
        "sampler_name": "euler",
        "scheduler": "karras",
        "denoise": 1.0,
    }
    prompt = {
        "3": {"class_type": "KSampler", "inputs": {**settings, "model": ["4", 0], "positive": ["42", 0],
              "negative": ["42", 1], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BUILTIN_NAME}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "adapter", "images": ["8", 0]}},
        "40": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "shapes-adapter"}},
        "41": {"class_type": "LoadImage", "inputs": {"image": "square.png"}},
        "42": {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["6", 0], "negative": ["7", 0],
               "control_net": ["40", 0], "image": ["41", 0], "strength": 0.8, "start_percent": 0.0,
               "end_percent": 1.0}},
    }  # fmt: skip
    entry = Executor(environment).execute(prompt, prompt_id="adapter")["9"]["images"][0]
    image = png_pixels(environment.folder(entry["type"]) / entry["subfolder"] / entry["filename"])
    pipe = lienzo.load()
    loaded = lienzo.load_controlnet("shapes-adapter", pipe, library=environment.library)
    assert isinstance(loaded.model, T2IAdapter) and loaded.family is None
    unit = lienzo.ControlUnit(loaded, Image.open(builtin_files / "in" / "square.png"), 0.8)
    reference = pipe.generate(
        "a red circle", width=64, height=64, controlnets=[unit], steps=2, cfg=5.0, sampler="euler",
        scheduler="karras", seed=5, progress=False,
    )[0]  # fmt: skip
    assert np.abs(image - png_pixels(reference)).max() <= 1


def test_an_a1111_unit_names_the_adapter(builtin_files):
    """An sd-webui-controlnet unit over HTTP whose model is the adapter's name steers the image."""
    handle = serve(builtin_files)
    try:
        image = base64.b64encode((builtin_files / "in" / "square.png").read_bytes()).decode()
        body = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 3}
        unit = {"module": "none", "model": "shapes-adapter", "image": image, "control_mode": "Balanced"}
        scripts = [{"alwayson_scripts": {"controlnet": {"args": units}}} for units in ([unit], [])]
        answers = [call(f"{handle.url}/sdapi/v1/txt2img", {**body, **script}) for script in scripts]
    finally:
        handle.stop()
    assert [status for status, _ in answers] == [200, 200], answers
    steered, plain = (png_pixels(io.BytesIO(base64.b64decode(answer["images"][0]))) for _, answer in answers)
    assert np.abs(steered - plain).max() > 8
    assert "Model: shapes-adapter" in json.loads(answers[0][1]["info"])["infotexts"][0]
