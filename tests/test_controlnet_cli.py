"""ControlNet on the command line (in process): units from flags, PNG metadata written and read back by
--from-png, img2img / inpaint / hires fix with a unit, and the user mistakes the flags can make."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from controlnet_models import control_image, controlnet_file
from lienzo.cli import main
from lienzo.pipelines.metadata import parse_parameters, read_parameters
from tiny_models import tiny_pipeline_folder

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ("--size", "32x32", "--steps", "2", "--seed", "3", "--sampler", "euler")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The tiny model, a ControlNet file in a models folder, a control image, a picture and a mask."""
    folder = tmp_path_factory.mktemp("control-cli")
    (folder / "models" / "controlnet").mkdir(parents=True)
    cn = folder / "models" / "controlnet" / "tiny_canny.safetensors"
    cn.write_bytes(controlnet_file("sd1", 1).read_bytes())
    control_image(32, 1).save(folder / "control.png")
    control_image(32, 9).save(folder / "picture.png")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    (folder / "broken.png").write_bytes(b"not an image")
    soft = np.full((32, 32, 3), 100, dtype=np.uint8)
    soft[8:24, 8:24] = 120
    Image.fromarray(soft).save(folder / "soft.png")
    return {"root": folder, "model": tiny_pipeline_folder("sd1"), "models": folder / "models"}


def run(files: dict, *args, out: str) -> tuple[int, str, list[Path]]:
    """main(args) in the fixture folder with the tiny model and its models folder; (status, -, PNGs)."""
    target = files["root"] / out
    argv = [*map(str, args), "--model", str(files["model"]), "--models-dir", str(files["models"])]
    status = main([*argv, *FAST, "-q", "--dtype", "fp32", "--device", "cpu", "-o", str(target)])
    return status, "", sorted(target.glob("*.png")) if target.is_dir() else []


def test_generate_records_the_unit_and_from_png_repeats_it(files, capsys):
    root = files["root"]
    status, _, written = run(
        files,
        "generate",
        "a red circle",
        "--controlnet",
        "tiny_canny",
        "--control-image",
        root / "control.png",
        "--control-strength",
        "0.7",
        "--control-end",
        "0.5",
        "--control-mode",
        "prompt",
        "--control-resize",
        "just-resize",
        out="first",
    )
    assert status == 0, capsys.readouterr().err
    text = read_parameters(written[0])
    assert 'ControlNet 0: "Module: none, Model: tiny_canny [' in text
    assert (
        "Weight: 0.7, Resize Mode: Just Resize, Processor Res: 512, Guidance Start: 0.0, Guidance End: 0.5, "
        'Pixel Perfect: False, Control Mode: My prompt is more important"'
    ) in text
    unit = parse_parameters(text)["controlnets"][0]
    assert unit["model"] == "tiny_canny" and unit["weight"] == 0.7 and unit["guidance_end"] == 0.5
    assert len(unit["model_hash"]) == 8
    again_status, _, again = run(
        files, "generate", "--from-png", written[0], "--control-image", root / "control.png", out="again"
    )
    assert again_status == 0, capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(again[0])), np.asarray(Image.open(written[0])))
    assert read_parameters(again[0]) == text
    status, _, plain = run(files, "generate", "a red circle", out="plain")
    assert status == 0
    assert not np.array_equal(np.asarray(Image.open(plain[0])), np.asarray(Image.open(written[0])))


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("img2img", ["picture.png"]),
        ("inpaint", ["picture.png", "mask.png"]),
        ("generate", ["--hires-scale", "1.5"]),
    ],
)
def test_every_mode_takes_a_unit_and_it_changes_the_image(files, capsys, command, extra):
    root = files["root"]
    inputs = [root / name if name.endswith(".png") else name for name in extra]
    flags = ["--controlnet", "tiny_canny", "--control-image", root / "control.png"]
    if command != "generate":
        inputs = [*inputs[: 2 if command == "inpaint" else 1], "a blue square", *inputs[2:]]
    else:
        inputs = ["a blue square", *inputs]
    status, _, with_unit = run(
        files, command, *inputs, *flags, "--control-resize", "resize-and-fill", out=f"{command}-cn"
    )
    assert status == 0, capsys.readouterr().err
    status, _, without = run(files, command, *inputs, out=f"{command}-plain")
    assert status == 0, capsys.readouterr().err
    assert "ControlNet 0:" in read_parameters(with_unit[0])
    assert not np.array_equal(np.asarray(Image.open(with_unit[0])), np.asarray(Image.open(without[0])))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--control-image", "control.png"], "need --controlnet"),
        (["--controlnet", "tiny_canny"], "need 1 --control-image"),
        (["--controlnet", "tiny_canny", "--control-image", "broken.png"], "cannot read"),
        (["--controlnet", "tiny_canny", "--control-image", "missing.png"], "does not exist"),
        (["--controlnet", "nothing_here", "--control-image", "control.png"], "nothing_here"),
        (
            [
                "--controlnet",
                "tiny_canny",
                "--controlnet",
                "tiny_canny",
                "--control-image",
                "control.png",
                "--control-image",
                "control.png",
                "--control-strength",
                "1",
                "--control-strength",
                "1",
                "--control-strength",
                "1",
            ],
            "--control-strength is given 3 times for 2",
        ),
        (
            [
                "--controlnet",
                "tiny_canny",
                "--control-image",
                "control.png",
                "--control-start",
                "0.8",
                "--control-end",
                "0.2",
            ],
            "start <= end",
        ),
    ],
)
def test_bad_control_flags_are_clear_errors(files, capsys, flags, message):
    root = files["root"]
    args = [root / flag if flag.endswith(".png") else flag for flag in flags]
    status, _, _ = run(files, "generate", "a cat", *args, out="bad")
    error = capsys.readouterr().err
    assert status == 1
    assert error.startswith("error:") and message in error and "Traceback" not in error


def test_preprocessor_thresholds_are_recorded_and_read_back(files, capsys):
    root = files["root"]
    flags = [
        "--controlnet",
        "tiny_canny",
        "--control-image",
        root / "soft.png",
        "--control-preprocess",
        "canny",
    ]
    status, _, first = run(files, "generate", "a house", *flags, "--canny-low", "50", out="canny")
    assert status == 0, capsys.readouterr().err
    text = read_parameters(first[0])
    assert "Module: canny, " in text and "Threshold A: 50.0, Threshold B: 200.0, " in text
    again = ["--from-png", first[0], "--control-image", root / "soft.png"]
    status, _, second = run(files, "generate", *again, out="canny-again")
    assert status == 0, capsys.readouterr().err
    assert read_parameters(second[0]) == text
    assert np.array_equal(np.asarray(Image.open(second[0])), np.asarray(Image.open(first[0])))
    low = ["--canny-low", "10", "--canny-high", "50"]
    status, _, other = run(files, "generate", "a house", *flags, *low, out="canny-other")
    assert status == 0
    assert not np.array_equal(np.asarray(Image.open(other[0])), np.asarray(Image.open(first[0])))
