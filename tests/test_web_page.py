"""The page at `/` in headless Chromium against a real `lienzo serve` (with a token) and the built-in model:
txt2img scored by the shapes scorer, img2img, inpainting with a mask painted by mouse, gallery reuse, PNG
parameters read on drop, cancel (x-ray mode too), and clear messages for bad input."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lienzo.io import read_model
from lienzo.io.library import BUILTIN_FOLDER
from lienzo.training.extract_lora import lora_modules
from lienzo.worlds.scorer import score
from lienzo.worlds.shapes import Scene, SceneObject, render

pytestmark = pytest.mark.browser

TOKEN = "page-test-token"
PROMPT = "a large red circle on the left on a blue background"
SEED = 3
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "images"


def save_screenshot(png: bytes, name: str) -> None:
    """A screenshot for docs/ui.md, in a 128-colour palette to keep the file small; written only when
    LIENZO_UI_SCREENSHOTS=1, so an ordinary run leaves the docs alone."""
    if os.environ.get("LIENZO_UI_SCREENSHOTS") != "1":
        return
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128).save(SCREENSHOTS / name, optimize=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def write_models(root: Path) -> None:
    """A random rank-2 kohya LoRA `wobble` over the built-in model, and an embedding file `shiny`."""
    generator = torch.Generator().manual_seed(0)
    files = read_model(BUILTIN_FOLDER)
    tensors = {}
    for module in lora_modules(files, conv=False):
        network = files.unet if module.component == "unet" else files.text_encoders[module.component[1]]
        out_features, in_features = network[module.weight].shape[:2]
        tensors[f"{module.key}.lora_down.weight"] = torch.randn(2, in_features, generator=generator) * 0.3
        tensors[f"{module.key}.lora_up.weight"] = torch.randn(out_features, 2, generator=generator) * 0.3
        tensors[f"{module.key}.alpha"] = torch.tensor(2.0)
    (root / "loras").mkdir(parents=True)
    save_file(tensors, str(root / "loras" / "wobble.safetensors"))
    (root / "embeddings").mkdir()
    save_file({"emb_params": torch.zeros(1, 8)}, str(root / "embeddings" / "shiny.safetensors"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`lienzo serve` in a subprocess on a free loopback port, with a token, a LoRA and an embedding."""
    folder = tmp_path_factory.mktemp("page")
    write_models(folder / "models")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "lienzo.cli",
        "serve",
        "--port",
        str(port),
        "--token",
        TOKEN,
        "--output-dir",
        str(folder / "out"),
        "--models-dir",
        str(folder / "models"),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if status_of(f"{url}/?token={TOKEN}") == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"lienzo serve did not start: {process.stdout.read().decode()}")
    yield url
    process.terminate()
    process.wait(30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("the browser tests need Debian's chromium: apt-get install -y chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(f"{server}/?token={TOKEN}")
    opened.wait_for_selector("body[data-ready=true]")
    yield opened
    context.close()
    assert errors == []


def fill_settings(page, prompt: str, steps: int = 10, size: int = 128) -> None:
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Steps").fill(str(steps))
    page.get_by_label("Width").fill(str(size))
    page.get_by_label("Height").fill(str(size))
    page.get_by_label("Random seed").uncheck()
    page.get_by_label("Seed", exact=True).fill(str(SEED))


def result_image(page, count: int = 1) -> tuple[str, Image.Image]:
    """The alt text and pixels of the newest result, once `count` results are shown."""
    images = page.locator("#results img")
    images.nth(count - 1).wait_for(timeout=180_000)
    page.wait_for_function("[...document.querySelectorAll('#results img')].every((i) => i.complete)")
    first = images.first
    body = page.request.get(first.get_attribute("src")).body()
    return first.get_attribute("alt"), Image.open(io.BytesIO(body)).convert("RGB")


def message(page) -> str:
    page.locator("#message:not([hidden])").wait_for(timeout=30_000)
    return page.locator("#message").inner_text()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def cancel_and_wait_for_an_empty_queue(page) -> None:
    """Press Cancel mid-run (of 150 steps): the page says so, and the queue empties."""
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_function("document.getElementById('status').textContent === 'Cancelled.'")
    page.wait_for_function("document.getElementById('cancel').disabled")
    assert page.locator("#progress").evaluate("(bar) => bar.value < 150")
    page.wait_for_function(
        f"""async () => {{
            const queue = await (await fetch("/queue?token={TOKEN}")).json();
            return queue.queue_running.length === 0 && queue.queue_pending.length === 0;
        }}""",
        timeout=60_000,
    )


def test_the_api_needs_the_token_the_page_carries(server):
    assert status_of(f"{server}/object_info") == 401
    assert status_of(f"{server}/?token={TOKEN}") == 200


def test_the_page_generates_an_image_the_scorer_accepts_with_previews_and_progress(page):
    fill_settings(page, PROMPT)
    page.get_by_label("Prompt", exact=True).press("Control+Enter")
    alt, image = result_image(page)
    assert alt == PROMPT
    assert image.size == (128, 128)
    assert score(PROMPT, image).matched
    assert page.locator("#live-preview").get_attribute("src").startswith("blob:")
    assert page.locator("#progress").evaluate("(bar) => bar.value === bar.max && bar.max === 10")
    assert page.locator("#status").inner_text() == "Done."
    save_screenshot(page.screenshot(), "ui-txt2img.png")


def test_gallery_reuse_and_send_to_img2img_and_a_dropped_png_gives_its_parameters(page):
    figure = page.locator("#gallery figure", has=page.locator(f"img[alt='{PROMPT}']")).first
    figure.wait_for()
    page.get_by_label("Prompt", exact=True).fill("something else")
    page.get_by_label("Steps").fill("3")
    page.get_by_label("Random seed").check()
    figure.get_by_role("button", name="Reuse parameters").click()
    assert page.get_by_label("Prompt", exact=True).input_value() == PROMPT
    assert page.get_by_label("Steps").input_value() == "10"
    assert page.get_by_label("Seed", exact=True).input_value() == str(SEED)
    assert not page.get_by_label("Random seed").is_checked()

    png = page.request.get(figure.locator("img").get_attribute("src")).body()
    page.get_by_label("Prompt", exact=True).fill("")
    page.get_by_label("Width").fill("512")
    transfer = page.evaluate_handle(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
            return transfer;
        }""",
        base64.b64encode(png).decode(),
    )
    page.dispatch_event("#gallery-section", "drop", {"dataTransfer": transfer})
    page.wait_for_function(f"document.getElementById('prompt').value === {PROMPT!r}")
    assert page.get_by_label("Width").input_value() == "128"
    assert page.get_by_label("Sampler").input_value() == "euler"

    figure.get_by_role("button", name="Send to img2img").click()
    page.wait_for_function("document.getElementById('source-preview').naturalWidth === 128")
    assert page.get_by_label("Image to image").is_checked()
    assert page.locator("#image-inputs").is_visible()


def test_the_pickers_insert_tags_and_a_picked_lora_changes_the_image(page):
    fill_settings(page, PROMPT)
    page.get_by_role("button", name="Generate").click()
    _, plain = result_image(page)
    prompt_box = page.get_by_label("Prompt", exact=True)
    prompt_box.press("End")
    page.get_by_label("Add embedding").select_option("shiny")
    assert prompt_box.input_value() == f"{PROMPT} shiny"
    prompt_box.fill(PROMPT)
    prompt_box.press("End")
    page.get_by_label("Add LoRA").select_option("wobble")
    tagged = f"{PROMPT} <lora:wobble:1>"
    assert prompt_box.input_value() == tagged
    assert page.get_by_label("Add LoRA").input_value() == ""
    page.get_by_role("button", name="Generate").click()
    page.locator(f"#results img[alt='{tagged}']").wait_for(timeout=180_000)
    _, with_lora = result_image(page)
    assert np.abs(pixels(with_lora) - pixels(plain)).mean() > 5


def test_every_control_is_labelled_and_tab_reaches_generate(page):
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea")]
            .filter((control) => !control.labels || control.labels.length === 0)
            .map((control) => control.id || control.name)"""
    )
    assert unlabelled == []
    link = page.get_by_role("link", name="Node editor").get_attribute("href")
    assert link.endswith(f"/comfyui/?token={TOKEN}")
    page.get_by_label("Prompt", exact=True).focus()
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "generate":
            break
    assert page.evaluate("document.activeElement.textContent") == "Generate"


def scene_png(tmp_path: Path, scene: Scene) -> Path:
    path = tmp_path / "source.png"
    render(scene).save(path)
    return path


def test_img2img_follows_the_prompt_from_an_uploaded_image(page, tmp_path):
    source = scene_png(tmp_path, Scene("white", (SceneObject("red", "circle", "large", "center"),)))
    page.get_by_label("Image to image").check()
    page.get_by_label("Source image", exact=True).set_input_files(str(source))
    page.wait_for_function("document.getElementById('source-preview').naturalWidth === 128")
    prompt = "a large blue circle in the center on a white background"
    fill_settings(page, prompt)
    page.get_by_label("Denoising strength").fill("0.8")
    page.get_by_role("button", name="Generate").click()
    alt, image = result_image(page)
    assert alt == prompt
    result = pixels(image)
    centre = result[48:80, 48:80]
    assert centre[..., 2].mean() > centre[..., 0].mean() + 50
    assert np.abs(result[:16, :16] - 255).mean() < 30


def test_inpainting_repaints_only_the_mask_painted_with_the_mouse(page, tmp_path):
    source_path = scene_png(tmp_path, Scene("white", (SceneObject("red", "circle", "large", "center"),)))
    source = pixels(Image.open(source_path).convert("RGB"))
    page.get_by_label("Inpaint").check()
    page.get_by_label("Source image", exact=True).set_input_files(str(source_path))
    page.wait_for_function("document.getElementById('mask-canvas').width === 128")
    page.get_by_label("Brush size").fill("40")
    box = page.locator("#mask-canvas").bounding_box()
    scale = box["width"] / 128
    for row in (48, 64, 80):
        page.mouse.move(box["x"] + 44 * scale, box["y"] + row * scale)
        page.mouse.down()
        page.mouse.move(box["x"] + 84 * scale, box["y"] + row * scale, steps=8)
        page.mouse.up()
    fill_settings(page, "a large blue circle in the center on a white background")
    page.get_by_label("Denoising strength").fill("1")
    save_screenshot(page.locator("#image-inputs").screenshot(), "ui-inpaint-mask.png")
    page.get_by_role("button", name="Generate").click()
    _, image = result_image(page)
    result = pixels(image)
    difference = np.abs(result - source).mean(axis=2)
    corners = np.concatenate(
        [difference[:20, :20], difference[:20, -20:], difference[-20:, :20], difference[-20:, -20:]]
    )
    centre = result[52:76, 52:76]
    assert corners.mean() < 12
    assert difference[52:76, 52:76].mean() > 5 * corners.mean()
    assert centre[..., 2].mean() > centre[..., 0].mean()


def test_outpainting_adds_the_padding_and_keeps_the_original(page, tmp_path):
    source_path = scene_png(tmp_path, Scene("white", (SceneObject("red", "circle", "large", "center"),)))
    source = pixels(Image.open(source_path).convert("RGB"))
    page.get_by_label("Outpaint").check()
    page.get_by_label("Source image", exact=True).set_input_files(str(source_path))
    page.wait_for_function("document.getElementById('source-preview').naturalWidth === 128")
    fill_settings(page, "a large red circle in the center on a white background")
    page.get_by_label("Denoising strength").fill("1")
    page.get_by_label("Right").fill("64")
    page.get_by_label("Top").fill("0")
    page.get_by_role("button", name="Generate").click()
    _, image = result_image(page)
    assert image.size == (192, 128)
    result = pixels(image)
    assert np.abs(result[:, :96] - source[:, :96]).mean() < 12
    assert np.abs(result[:, 150:] - 255).mean() < 40


def test_the_xray_mode_shows_a_map_per_word_where_the_words_act(page):
    page.get_by_label("X-ray", exact=True).check()
    fill_settings(page, PROMPT)
    page.get_by_role("button", name="Generate").click()
    circle = page.locator("#xray img[alt='Attention map of \"circle\"']")
    circle.wait_for(timeout=240_000)
    page.wait_for_function("[...document.querySelectorAll('#xray img')].every((i) => i.naturalWidth > 0)")
    words = PROMPT.split()
    alts = page.locator("#xray .maps img").evaluate_all("(images) => images.map((image) => image.alt)")
    assert alts == [f'Attention map of "{word}"' for word in words]
    assert page.locator(f"#xray img[alt='{PROMPT}']").evaluate("(image) => image.naturalWidth") == 128
    assert page.locator("#xray table.tokens td", has_text="circle</w>").count() == 1
    values = pixels(Image.open(io.BytesIO(page.request.get(circle.get_attribute("src")).body())).convert("L"))
    assert values.shape == (128, 128)
    assert values[:, :64].mean() > values[:, 64:].mean()
    save_screenshot(page.locator("#xray").screenshot(), "ui-xray.png")


def test_the_xray_mode_shows_step_progress_and_previews_and_cancel_interrupts_it(page, server):
    page.get_by_label("X-ray", exact=True).check()
    fill_settings(page, PROMPT, steps=150)
    page.get_by_label("Trajectory interval").fill("50")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function(
        "document.getElementById('progress').max === 150 && document.getElementById('progress').value >= 2",
        timeout=120_000,
    )
    assert page.locator("#status").inner_text().startswith("Step ")
    page.locator("#live-preview[src^='blob:']").wait_for(timeout=60_000)
    cancel_and_wait_for_an_empty_queue(page)
    history = page.request.get(f"{server}/history?token={TOKEN}").json()
    stopped = [
        item for item in history.values() if "xray" in item["prompt"][2] and not item["status"]["completed"]
    ]
    assert len(stopped) == 1 and "xray" not in stopped[0]["outputs"]
    assert page.locator("#xray").is_hidden()


def test_the_grid_mode_draws_an_xy_plot_and_refuses_a_bad_axis(page):
    page.get_by_label("Grid", exact=True).check()
    fill_settings(page, PROMPT, steps=4)
    page.get_by_label("X axis").fill("cfg=3,lots")
    page.get_by_role("button", name="Generate").click()
    text = message(page)
    assert "cfg" in text and "lots" in text and "Traceback" not in text
    page.get_by_label("X axis").fill("cfg=3,9")
    page.get_by_label("Y axis").fill("seed=1,2")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("document.getElementById('status').textContent === 'Done.'", timeout=240_000)
    alt, image = result_image(page)
    assert alt == PROMPT
    assert image.width > 2 * 128 and image.height > 2 * 128
    save_screenshot(page.locator("#results").screenshot(), "ui-grid.png")


def test_cancel_stops_the_running_prompt_and_deletes_the_queued_one(page, server):
    fill_settings(page, PROMPT, steps=150, size=256)  # seconds of work, so the first job is still running
    page.get_by_role("button", name="Generate").click()
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("document.getElementById('progress').value >= 2", timeout=120_000)
    queue = page.request.get(f"{server}/queue?token={TOKEN}").json()
    assert len(queue["queue_running"]) == 1 and len(queue["queue_pending"]) == 1
    waiting = queue["queue_pending"][0][1]
    cancel_and_wait_for_an_empty_queue(page)
    assert page.request.get(f"{server}/history/{waiting}?token={TOKEN}").json() == {}


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda page: page.get_by_label("Prompt", exact=True).fill("   "), "The prompt is empty"),
        (lambda page: page.get_by_label("Prompt", exact=True).fill("red " * 1001), "at most 4000"),
        (lambda page: page.get_by_label("Width").fill("100"), "Width 100 is not allowed: use a multiple"),
        (lambda page: page.get_by_label("Height").fill("4096"), "Height 4096 is not allowed"),
        (
            lambda page: page.get_by_label("Prompt", exact=True).fill("a red circle <lora:no_such_lora:1>"),
            "LoraLoader (lora_name): Value not in list",
        ),
    ],
)
def test_bad_settings_give_a_clear_message(page, setup, expected):
    fill_settings(page, PROMPT)
    setup(page)
    page.get_by_role("button", name="Generate").click()
    text = message(page)
    assert expected in text
    assert "Traceback" not in text


def test_an_unreadable_image_and_a_mask_of_the_wrong_size_give_clear_messages(page, tmp_path):
    page.get_by_label("Inpaint").check()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a picture")
    page.get_by_label("Source image", exact=True).set_input_files(str(broken))
    assert "broken.png could not be read as an image" in message(page)

    source = scene_png(tmp_path, Scene("white", (SceneObject("red", "circle", "large", "center"),)))
    page.get_by_label("Source image", exact=True).set_input_files(str(source))
    page.wait_for_function("document.getElementById('mask-canvas').width === 128")
    small = tmp_path / "small_mask.png"
    Image.new("L", (64, 64), 255).save(small)
    page.get_by_label("Mask image").set_input_files(str(small))
    text = message(page)
    assert "The mask is 64×64 pixels but the source image is 128×128" in text
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_role("button", name="Generate").click()
    assert "The mask is empty" in message(page)
