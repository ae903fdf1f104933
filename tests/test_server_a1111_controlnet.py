"""ControlNet units in A1111's `alwayson_scripts.controlnet.args` reach the generation over real HTTP: a unit
changes the image, a unit at weight 0 does not, the units are recorded as the extension writes them, and bad
units are refused with 400."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import lienzo
from lienzo.pipelines.preprocessors import preprocess
from lienzo.training.controlnet_training import new_controlnet, write_controlnet_folder
from server_client import PROMPT, SIZE, STEPS, b64_png, call, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("a1111-controlnet")
    pipe = lienzo.load()
    controlnet = new_controlnet(pipe.unet, pipe.spec.vae.downscale_factor).float()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in controlnet.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    write_controlnet_folder(controlnet, folder / "models" / "controlnet" / "probe")
    handle = serve(folder)
    yield handle
    handle.stop()


def control_image() -> str:
    image = Image.new("RGB", (SIZE, SIZE), "black")
    ImageDraw.Draw(image).rectangle((70, 30, 110, 70), outline="white", width=2)
    return b64_png(image)


def txt2img(server, units: list[dict] | None) -> tuple[int, object]:
    body = {"prompt": PROMPT, "steps": STEPS, "width": SIZE, "height": SIZE, "seed": 3}
    if units is not None:
        body["alwayson_scripts"] = {"controlnet": {"args": units}}
    return call(f"{server.url}/sdapi/v1/txt2img", body)


def pixels(answer: dict) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def unit(**changes) -> dict:
    return {
        "enabled": True,
        "module": "none",
        "model": "probe [0123abcd]",
        "image": control_image(),
        "weight": 1.0,
        "resize_mode": "Crop and Resize",
        "control_mode": "Balanced",
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "pixel_perfect": False,
        **changes,
    }


def test_a_unit_steers_the_image_and_weight_zero_leaves_it(server):
    status, plain = txt2img(server, None)
    assert status == 200, plain
    status, steered = txt2img(server, [unit()])
    assert status == 200, steered
    status, idle = txt2img(server, [unit(weight=0.0)])
    assert status == 200, idle
    status, disabled = txt2img(server, [unit(enabled=False)])
    assert status == 200, disabled
    assert np.abs(pixels(steered) - pixels(plain)).max() > 16
    assert np.abs(pixels(idle) - pixels(plain)).max() <= 1
    assert np.array_equal(pixels(disabled), pixels(plain))
    infotext = json.loads(steered["info"])["infotexts"][0]
    assert 'ControlNet 0: "Module: none, Model: probe' in infotext
    assert "Control Mode: Balanced" in infotext


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "missing"}, "missing"),
        ({"module": "openpose"}, "openpose"),
        ({"control_mode": 7}, "control_mode"),
        ({"weight": "strong"}, "weight"),
        ({"image": "not base64!"}, "base64"),
    ],
)
def test_bad_units_are_refused_with_400(server, change, message):
    status, answer = txt2img(server, [unit(**change)])
    assert status == 400
    assert message in json.dumps(answer)


def test_the_extension_routes_list_models_and_modules(server):
    status, answer = call(f"{server.url}/controlnet/version")
    assert status == 200 and answer == {"version": 2}
    status, answer = call(f"{server.url}/controlnet/model_list")
    assert status == 200 and {"probe", "shapes-v2-canny", "shapes-v1-canny"} <= set(answer["model_list"])
    status, answer = call(f"{server.url}/controlnet/module_list")
    assert status == 200 and {"none", "canny", "scribble_xdog", "depth"} <= set(answer["module_list"])
    assert [slider["value"] for slider in answer["module_detail"]["canny"]["sliders"]] == [100, 200]


def test_detect_runs_the_preprocessor_like_lienzo_preprocess(server):
    image = Image.new("RGB", (64, 64), "navy")
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill="orange")
    body = {
        "controlnet_module": "canny",
        "controlnet_input_images": [b64_png(image)],
        "controlnet_threshold_a": 50,
        "controlnet_threshold_b": 120,
    }
    status, answer = call(f"{server.url}/controlnet/detect", body)
    assert status == 200 and answer["info"] == "Success"
    detected = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB"))
    expected = np.asarray(preprocess("canny", image, low_threshold=50, high_threshold=120))
    assert detected.any() and np.array_equal(detected, expected)
    status, answer = call(f"{server.url}/controlnet/detect", {**body, "controlnet_module": "openpose"})
    assert status == 400 and "openpose" in answer["detail"]
    status, answer = call(f"{server.url}/controlnet/detect", {**body, "controlnet_input_images": ["x"]})
    assert status == 400 and "base64" in answer["detail"]
