"""The fast modes over real HTTP: A1111's token_merging_ratio (and lienzo's DeepCache and CFG-cutoff
settings) in override_settings and /sdapi/v1/options against the Python API's FastModes; values out of
range refused by both APIs (ComfyUI's node errors for the fast-mode nodes)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

import lienzo
from lienzo.pipelines.metadata import parse_parameters
from server_client import PROMPT, api_workflow, b64_png, call, serve

SIZE = 64
BODY = {"prompt": PROMPT, "steps": 6, "width": SIZE, "height": SIZE, "seed": 3, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    handle = serve(tmp_path_factory.mktemp("fast"))
    yield handle
    handle.stop()


def txt2img(server, **overrides) -> Image.Image:
    status, answer = call(f"{server.url}/sdapi/v1/txt2img", {**BODY, "override_settings": overrides})
    assert status == 200, answer
    return Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))


def python_api(**fast) -> Image.Image:
    settings = {"width": SIZE, "height": SIZE, "steps": 6, "cfg": 7.0, "sampler": "Euler", "seed": 3}
    return lienzo.load().generate(PROMPT, fast=lienzo.FastModes(**fast), progress=False, **settings)[0]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_token_merging_ratio_in_override_settings_matches_the_python_api(server):
    plain, merged = txt2img(server), txt2img(server, token_merging_ratio=0.5)
    assert np.abs(pixels(merged) - pixels(python_api(tome=0.5))).max() <= 1
    assert np.abs(pixels(merged) - pixels(plain)).mean() > 0.1  # 0.22 on shapes-v2, 0.5 or more on shapes-v1
    assert "Token merging ratio: 0.5" in merged.info["parameters"]
    assert parse_parameters(merged.info["parameters"])["fast"] == lienzo.FastModes(tome=0.5).to_record()
    assert "Token merging ratio" not in plain.info["parameters"]


def test_lienzo_settings_set_deepcache_and_the_cfg_cutoff(server):
    image = txt2img(server, lienzo_deepcache_interval=3, lienzo_cfg_cutoff=0.5)
    assert np.abs(pixels(image) - pixels(python_api(deepcache=3, cfg_cutoff=0.5))).max() <= 1
    assert parse_parameters(image.info["parameters"])["fast"] == {
        "cfg_cutoff": 0.5,
        "deepcache": 3,
        "tome": 0.0,
    }


def test_the_options_hold_the_ratio_for_requests_without_an_override(server):
    options = call(f"{server.url}/sdapi/v1/options")[1]
    assert options["token_merging_ratio"] == 0.0 and options["lienzo_deepcache_interval"] == 1
    assert call(f"{server.url}/sdapi/v1/options", {"token_merging_ratio": 0.5})[0] == 200
    try:
        assert call(f"{server.url}/sdapi/v1/options")[1]["token_merging_ratio"] == 0.5
        assert np.array_equal(pixels(txt2img(server)), pixels(txt2img(server, token_merging_ratio=0.5)))
        assert "Token merging ratio" not in txt2img(server, token_merging_ratio=0.0).info["parameters"]
    finally:
        call(f"{server.url}/sdapi/v1/options", {"token_merging_ratio": 0.0})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"token_merging_ratio": 0.95}, "token_merging_ratio must be a number in [0.0, 0.9], got 0.95"),
        ({"token_merging_ratio": "half"}, "token_merging_ratio must be a number"),
        ({"lienzo_deepcache_interval": 2.5}, "lienzo_deepcache_interval must be a whole number"),
        ({"lienzo_cfg_cutoff": -1}, "lienzo_cfg_cutoff must be a number in [0.0, 1.0]"),
    ],
)
def test_settings_out_of_range_are_refused_with_the_setting_named(server, overrides, message):
    status, answer = call(f"{server.url}/sdapi/v1/txt2img", {**BODY, "override_settings": overrides})
    assert status == 400 and message in answer["detail"]
    status, answer = call(f"{server.url}/sdapi/v1/options", overrides)
    assert status == 400 and message in answer["detail"]


def test_a_different_hires_ratio_is_refused(server):
    body = {**BODY, "enable_hr": True, "override_settings": {"token_merging_ratio_hr": 0.3}}
    status, answer = call(f"{server.url}/sdapi/v1/txt2img", body)
    assert status == 400 and "token_merging_ratio_hr 0.3 differs" in answer["detail"]


def test_comfyui_prompts_get_node_errors_for_a_ratio_out_of_range(server):
    info = call(f"{server.url}/object_info/TomePatchModel")[1]["TomePatchModel"]
    assert info["input"]["required"]["ratio"] == [
        "FLOAT",
        {"default": 0.3, "min": 0.0, "max": 0.9, "step": 0.01},
    ]
    workflow = api_workflow()
    workflow["10"] = {"class_type": "TomePatchModel", "inputs": {"model": ["4", 0], "ratio": 1.5}}
    workflow["3"]["inputs"]["model"] = ["10", 0]
    status, answer = call(f"{server.url}/prompt", {"prompt": workflow})
    assert status == 400
    assert [error["type"] for error in answer["node_errors"]["10"]["errors"]] == ["value_bigger_than_max"]


def test_img2img_reads_the_img2img_ratio_unless_the_request_overrides_token_merging_ratio(server):
    start = Image.new("RGB", (SIZE, SIZE), (40, 90, 200))
    body = {**BODY, "init_images": [b64_png(start)], "denoising_strength": 0.75}
    settings = {"width": SIZE, "height": SIZE, "steps": 6, "cfg": 7.0, "sampler": "Euler", "seed": 3}
    pipe = lienzo.load()

    def img2img(**overrides) -> np.ndarray:
        status, answer = call(f"{server.url}/sdapi/v1/img2img", {**body, "override_settings": overrides})
        assert status == 200, answer
        return pixels(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))))

    def reference(tome: float) -> np.ndarray:
        fast = lienzo.FastModes(tome=tome)
        return pixels(pipe.img2img(start, PROMPT, strength=0.75, fast=fast, progress=False, **settings)[0])

    merged = img2img(token_merging_ratio_img2img=0.5)
    assert np.abs(merged - reference(0.5)).max() <= 1
    assert np.abs(merged - reference(0.0)).mean() > 0.1  # 0.24 on shapes-v2, 0.5 or more on shapes-v1
    assert np.array_equal(img2img(token_merging_ratio_img2img=0.5, token_merging_ratio=0.0), img2img())
