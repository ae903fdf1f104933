"""Outpainting: canvas sizes, the original region kept bit for bit, the fill, bad margins."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import lienzo
from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.outpaint import extend_canvas
from tiny_models import tiny_pipeline_folder

FAST = {"steps": 2, "seed": 5, "sampler": "euler", "cfg": 5.0}


def noise_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A reproducible RGB image of random pixels."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def pixels(image: Image.Image) -> torch.Tensor:
    """(H, W, 3) uint8 tensor of an RGB image."""
    data = bytearray(image.convert("RGB").tobytes())
    return torch.frombuffer(data, dtype=torch.uint8).reshape(image.height, image.width, 3)


@pytest.fixture(scope="module")
def pipe():
    return lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)


def test_extend_canvas_fills_from_the_edges_and_masks_only_the_new_area():
    image = Image.new("RGB", (16, 8), (200, 10, 10))
    canvas, mask = extend_canvas(image, left=8, top=0, right=0, bottom=16)
    assert canvas.size == (24, 24) and mask.size == (24, 24)
    assert canvas.getpixel((0, 23)) == (200, 10, 10)
    assert mask.getpixel((8, 0)) == 0 and mask.getpixel((7, 0)) == 255 and mask.getpixel((8, 8)) == 255
    assert torch.equal(pixels(canvas)[0:8, 8:24], pixels(image))


@pytest.mark.parametrize(
    ("margins", "size"),
    [({"left": 8, "bottom": 16}, (40, 40)), ({"right": 16, "top": 8}, (48, 32))],
)
def test_outpaint_extends_the_canvas_and_keeps_the_original(pipe, margins, size):
    image = noise_image((32, 24))
    result = pipe.outpaint(image, "a wide landscape", **margins, **FAST)[0]
    assert result.size == size and result.info["lienzo"]["mode"] == "outpaint"
    left, top = margins.get("left", 0), margins.get("top", 0)
    assert torch.equal(pixels(result)[top : top + 24, left : left + 32], pixels(image))
    new_area = pixels(result)[size[1] - 8 :] if "bottom" in margins else pixels(result)[:8]
    assert new_area.float().std() > 0


@pytest.mark.parametrize(
    ("margins", "message"),
    [
        ({"left": 12}, "multiple of 8"),
        ({"bottom": -8}, "multiple of 8"),
        ({}, "at least one margin"),
        ({"right": 8, "strength": 2.0}, r"\[0, 1\]"),
    ],
)
def test_outpaint_rejects_bad_margins(pipe, margins, message):
    with pytest.raises(InvalidArgumentError, match=message):
        pipe.outpaint(noise_image((32, 24)), "a wide landscape", **margins, **FAST)


@pytest.mark.parametrize("family", ["sd2-v", "sdxl"])
def test_outpaint_works_for_v_prediction_and_sdxl(family):
    other = lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32)
    image = noise_image((32, 32))
    result = other.outpaint(image, "a wide landscape", right=8, **FAST)[0]
    assert result.size == (40, 32) and result.info["lienzo"]["family"] == family
    assert torch.equal(pixels(result)[:, :32], pixels(image))
