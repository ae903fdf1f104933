"""Parameter grids: axis parsing (values, A1111 ranges, errors), planning before any image, and the
`lienzo grid` command end to end on the built-in model."""

from __future__ import annotations

import pytest
from PIL import Image

from lienzo.cli import main
from lienzo.errors import InvalidArgumentError, LienzoError
from lienzo.pipelines.control_units import ControlUnit
from lienzo.pipelines.grid import plan_grid
from lienzo.pipelines.grid_axes import parse_axis
from lienzo.pipelines.metadata import parse_parameters, read_parameters
from lienzo.pipelines.options import HiresOptions

PROMPT = "a large red circle in the center on a blue background"


@pytest.mark.parametrize(
    ("text", "kind", "values"),
    [
        ("cfg=3,7,11", "cfg", (3.0, 7.0, 11.0)),
        ("steps=10-30 (+10)", "steps", (10, 20, 30)),
        ("steps=1-4", "steps", (1, 2, 3, 4)),
        ("cfg=1-2 [3]", "cfg", (1.0, 1.5, 2.0)),
        ("seed=5, 1-2", "seed", (5, 1, 2)),
        ("sampler=euler, DPM++ 2M Karras", "sampler", ("euler", "DPM++ 2M Karras")),
        ("size=512x768,64", "size", ((512, 768), (64, 64))),
        ("strength=0.25,0.75", "denoising", (0.25, 0.75)),
        ("lora:ink=0,0.5,1", "lora", (0.0, 0.5, 1.0)),
        ('prompt_sr=cat,"dog, brown"', "prompt_sr", ("cat", "dog, brown")),
    ],
)
def test_axes_parse_values_and_ranges(text, kind, values):
    axis = parse_axis(text)
    assert axis.kind == kind and axis.values == values
    assert len(axis.labels) == len(values)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cfg=3,x", "--y cfg: 'x'"),
        ("steps=0,10", "--y steps: '0'"),
        ("steps=2.5", "--y steps: '2.5'"),
        ("sampler=euler,fastest", "--y sampler: 'fastest'"),
        ("scheduler=karras,bumpy", "--y scheduler: 'bumpy'"),
        ("size=100x100", "--y size: '100x100'"),
        ("denoising=1.5", "--y denoising: '1.5'"),
        ("colour=red", "is not an axis"),
        ("cfg", "is not an axis"),
        ("cfg=", "at least one value"),
    ],
)
def test_bad_axis_values_name_the_axis_and_value(text, message):
    with pytest.raises(InvalidArgumentError, match=message.replace("+", r"\+")):
        parse_axis(text, "--y")


def test_plan_applies_every_axis_and_checks_before_images():
    cells = plan_grid(
        "a red cat",
        [parse_axis("prompt_sr=cat,dog"), parse_axis("lora:ink=0,1"), parse_axis("size=64x128")],
        {"steps": 2, "negative_prompt": "blurry cat"},
    )
    assert [cell.indices for cell in cells] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    assert [cell.prompt for cell in cells] == [
        "a red cat <lora:ink:0>",
        "a red dog <lora:ink:0>",
        "a red cat <lora:ink:1>",
        "a red dog <lora:ink:1>",
    ]
    assert cells[1].settings["negative_prompt"] == "blurry dog"
    assert (cells[0].settings["width"], cells[0].settings["height"]) == (64, 128)
    hires = plan_grid("a cat", [parse_axis("denoising=0.3")], {"hires": HiresOptions(scale=2)})
    assert hires[0].settings["hires"].strength == 0.3
    with pytest.raises(InvalidArgumentError, match="--x prompt_sr: 'fox' is not in the prompt"):
        plan_grid("a cat", [parse_axis("prompt_sr=fox,dog")], {})
    with pytest.raises(InvalidArgumentError, match="--x denoising"):
        plan_grid("a cat", [parse_axis("denoising=0.3")], {})
    with pytest.raises(InvalidArgumentError, match="steps must be 1 or more"):
        plan_grid("a cat", [parse_axis("seed=1")], {"steps": 0})

    unit = ControlUnit("canny", Image.new("RGB", (64, 64)), strength=1.0)
    controlled = plan_grid("a cat", [parse_axis("controlnet_strength=0,0.5")], {"controlnets": [unit]})
    assert [cell.settings["controlnets"][0].strength for cell in controlled] == [0.0, 0.5]
    with pytest.raises(InvalidArgumentError, match="--x controlnet_strength: give a ControlNet unit"):
        plan_grid("a cat", [parse_axis("controlnet_strength=0,0.5")], {})

    def missing(kind, name):
        raise LienzoError(f"no {kind} named {name}")

    with pytest.raises(LienzoError, match="no loras named ink"):
        plan_grid("a cat", [parse_axis("lora:ink=0,1")], {}, check_name=missing)


def test_grid_cli_writes_labelled_grids_and_images(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = ["grid", PROMPT, "--x", "sampler=euler,dpmpp_2m", "--y", "cfg=3,7", "--z", "steps=1,2"]
    assert main([*argv, "--seed", "4", "-q", "-o", str(out)]) == 0
    images = sorted((out / "images").iterdir())
    assert len(images) == 8
    grids = sorted(path.name for path in out.iterdir() if path.is_file())
    assert grids == ["grid-01.png", "grid-02.png"]
    with Image.open(out / "grid-01.png") as grid:
        assert grid.width > 2 * 128 and grid.height > 2 * 128
        left_band = grid.crop((0, 0, grid.width - 2 * 128, grid.height)).convert("L")
        assert min(left_band.getdata()) < 128, "the row labels are drawn left of the images"
    records = [parse_parameters(read_parameters(path)) for path in images]
    assert [(r["sampler"], r["cfg"], r["steps"]) for r in records[:4]] == [
        ("euler", 3.0, 1),
        ("dpmpp_2m", 3.0, 1),
        ("euler", 7.0, 1),
        ("dpmpp_2m", 7.0, 1),
    ]
    assert {r["steps"] for r in records[4:]} == {2}


def test_grid_cli_refuses_a_bad_value_before_any_image(tmp_path, capsys):
    out = tmp_path / "grid"
    status = main(["grid", PROMPT, "--x", "cfg=3,7", "--y", "steps=10,ten", "-o", str(out)])
    assert status == 1
    assert "--y steps: 'ten'" in capsys.readouterr().err
    assert not out.exists()
