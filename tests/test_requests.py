"""validate_request: the model-free checks of a generation request, shared by the CLI and the server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines import requests
from lienzo.pipelines.options import HiresOptions
from lienzo.pipelines.requests import validate_request

BAD_REQUESTS = {
    "unknown mode": ("txt3img", {}, {}, "unknown mode"),
    "extra of another mode": ("generate", {}, {"padding": 32}, "generate does not take padding"),
    "steps 0": ("generate", {"steps": 0}, {}, "steps must be 1 or more"),
    "size not a multiple of 8": ("generate", {"width": 30}, {}, "multiple of 8"),
    "unknown sampler": ("img2img", {"sampler": "warp drive"}, {}, "unknown sampler"),
    "strength above 1": ("img2img", {"strength": 1.5}, {}, "[0, 1]"),
    "unknown setting": ("generate", {"colour": "red"}, {}, "colour"),
    "hires key unknown": ("generate", {"hires": {"scale": 2, "zoom": 3}}, {}, "hires takes scale"),
    "hires scale 0": ("generate", {"hires": {"scale": 0}}, {}, "hires scale must be positive"),
    "preview every 0": ("generate", {}, {"preview_every": 0}, "--preview-every"),
    "padding not a multiple of 8": ("inpaint", {}, {"padding": 12}, "padding must be"),
    "outpaint margin not a multiple of 8": ("outpaint", {}, {"left": 12}, "left must be"),
    "negative outpaint margin": ("outpaint", {}, {"top": -8}, "top must be"),
    "outpaint without a margin": ("outpaint", {}, {"left": 0, "right": None}, "needs a margin"),
    "refiner switch without refiner": ("generate", {}, {"refiner_switch_at": 0.7}, "needs --refiner"),
    "refiner switch above 1": (
        "generate",
        {},
        {"refiner": "refiner.safetensors", "refiner_switch_at": 1.5},
        "[0, 1]",
    ),
}
GOOD_REQUESTS = [
    ("generate", {"steps": 4, "width": 64, "height": 32, "hires": HiresOptions(scale=1.5)}, {}),
    ("generate", {"hires": {"scale": 2, "upscaler": "image"}}, {"preview_every": 2}),
    ("generate", {}, {"refiner": "r.safetensors", "refiner_switch_at": 0.8, "preview_every": None}),
    ("img2img", {"strength": 0.4, "sampler": "DPM++ 2M Karras"}, None),
    ("inpaint", {"strength": 1.0}, {"padding": 32, "mask_blur": 4, "only_masked": True}),
    ("outpaint", {}, {"left": 0, "right": 64, "mask_blur": 2}),
]
ALLOWED_IMPORTS = {
    "lienzo.errors",
    "lienzo.models.specs",
    "lienzo.pipelines.masking",
    "lienzo.pipelines.options",
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_each_bad_request_is_refused_with_what_to_fix(case):
    mode, settings, extras, fragment = BAD_REQUESTS[case]
    with pytest.raises(InvalidArgumentError) as error:
        validate_request(mode, settings, extras)
    assert fragment in str(error.value)


@pytest.mark.parametrize(("mode", "settings", "extras"), GOOD_REQUESTS)
def test_good_requests_pass(mode, settings, extras):
    assert validate_request(mode, settings, extras) is None


def test_imports_only_model_free_modules():
    imported = set()
    for node in ast.walk(ast.parse(Path(requests.__file__).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            package = ("", "lienzo.pipelines.", "lienzo.")[node.level]
            imported.add(package + node.module)
    assert {name for name in imported if name.startswith("lienzo")} <= ALLOWED_IMPORTS
