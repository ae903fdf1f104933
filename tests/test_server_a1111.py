"""A1111's API over real HTTP: txt2img and img2img (inpainting too) give images the shapes scorer accepts,
with A1111's response shape; options switch checkpoints; png-info reads parameters back."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from lienzo.io.library import BUILTIN_NAME
from lienzo.worlds.scorer import score
from server_client import PROMPT, SIZE, STEPS, b64_png, call, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    handle = serve(tmp_path_factory.mktemp("a1111"))
    yield handle
    handle.stop()


def generate(server, route: str, body: dict) -> tuple[dict, list[Image.Image]]:
    status, answer = call(f"{server.url}/sdapi/v1/{route}", body)
    assert status == 200, answer
    images = [Image.open(io.BytesIO(base64.b64decode(item))) for item in answer["images"]]
    return answer, images


def test_txt2img_answers_like_a1111_with_an_image_that_follows_the_prompt(server):
    body = {
        "prompt": PROMPT,
        "steps": STEPS,
        "width": SIZE,
        "height": SIZE,
        "seed": 1,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "alwayson_scripts": {},
        "script_args": [],
    }
    answer, (image,) = generate(server, "txt2img", body)
    assert isinstance(answer["info"], str)
    info = json.loads(answer["info"])
    assert info["all_seeds"] == [1] and info["sd_model_name"] == BUILTIN_NAME
    assert answer["parameters"]["prompt"] == PROMPT
    assert image.size == (SIZE, SIZE)
    assert image.info["parameters"] == info["infotexts"][0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in image.info["parameters"]
    assert score(PROMPT, image.convert("RGB")).matched


def test_img2img_redraws_an_init_image_toward_the_prompt(server):
    start = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    body = {
        "prompt": PROMPT,
        "init_images": [b64_png(start)],
        "denoising_strength": 0.9,
        "steps": STEPS,
        "width": SIZE,
        "height": SIZE,
        "seed": 1,
    }
    answer, (image,) = generate(server, "img2img", body)
    assert json.loads(answer["info"])["denoising_strength"] == 0.9
    assert "init_images" not in answer["parameters"]
    assert score(PROMPT, image.convert("RGB")).matched


def test_inpainting_keeps_the_unmasked_half(server):
    source = Image.new("RGB", (SIZE, SIZE), (120, 40, 160))
    ImageDraw.Draw(source).polygon([(100, 10), (120, 50), (80, 50)], fill=(230, 210, 30))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))
    inverted = mask.point(lambda value: 255 - value)
    body = {
        "prompt": PROMPT,
        "init_images": [b64_png(source)],
        "mask": b64_png(inverted),
        "inpainting_mask_invert": 1,
        "mask_blur": 0,
        "inpainting_fill": 1,
        "inpaint_full_res": False,
        "denoising_strength": 1.0,
        "steps": STEPS,
        "width": SIZE,
        "height": SIZE,
        "seed": 2,
    }
    _, (image,) = generate(server, "img2img", body)
    kept = np.asarray(image.convert("RGB"))[:, SIZE // 2 + 8 :].astype(int)
    original = np.asarray(source.convert("RGB"))[:, SIZE // 2 + 8 :].astype(int)
    assert np.abs(kept - original).mean() < 2
    assert "Mask blur: 0" in image.info["parameters"]


def test_unsupported_inpainting_fill_and_bad_fields_are_refused(server):
    square = b64_png(Image.new("RGB", (64, 64)))
    for body in (
        {"init_images": [square], "mask": square, "inpainting_fill": 0, "denoising_strength": 0.5},
        {"prompt": PROMPT, "width": 100},
        {"prompt": 3},
        {"sampler_name": "No Such Sampler"},
    ):
        route = "img2img" if "init_images" in body else "txt2img"
        status, answer = call(f"{server.url}/sdapi/v1/{route}", body)
        assert status == 400, answer
        assert answer["detail"]


def test_options_switch_the_checkpoint_only_to_one_the_library_has(server):
    status, answer = call(f"{server.url}/sdapi/v1/options", {"sd_model_checkpoint": "missing-model"})
    assert status == 404 and "missing-model" in answer["detail"]
    assert call(f"{server.url}/sdapi/v1/options", {"sd_model_checkpoint": f"{BUILTIN_NAME} [abc]"})[0] == 200
    assert call(f"{server.url}/sdapi/v1/options")[1]["sd_model_checkpoint"] == BUILTIN_NAME
    models = call(f"{server.url}/sdapi/v1/sd-models")[1]
    names = [model["model_name"] for model in models]
    assert names[0] == BUILTIN_NAME and set(names) == {"shapes-v1", "shapes-v2"}
    samplers = {item["name"] for item in call(f"{server.url}/sdapi/v1/samplers")[1]}
    assert {"Euler a", "DPM++ 2M"} <= samplers


def test_png_info_reads_the_parameters_back(server):
    text = f"{PROMPT}\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64"
    info = PngInfo()
    info.add_text("parameters", text)
    info.add_text("workflow", "{}")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG", pnginfo=info)
    status, answer = call(
        f"{server.url}/sdapi/v1/png-info", {"image": base64.b64encode(buffer.getvalue()).decode()}
    )
    assert status == 200 and answer["info"] == text and answer["items"] == {"workflow": "{}"}
    assert answer["parameters"]["seed"] == 5 and answer["parameters"]["sampler"] == "euler_ancestral"


def test_progress_is_idle_between_jobs(server):
    status, answer = call(f"{server.url}/sdapi/v1/progress")
    assert status == 200 and answer["progress"] == 0 and answer["current_image"] is None
