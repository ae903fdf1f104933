"""The `lienzo` console entry in a subprocess: info and convert, and one clean error line for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lienzo.io import write_safetensors
from tiny_models import tiny_pipeline_folder

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "src"


def run_cli(*args: object) -> subprocess.CompletedProcess:
    """Run `python -m lienzo.cli ARGS` with the source tree on the path."""
    environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}
    command = [sys.executable, "-m", "lienzo.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)


def assert_one_error_line(result: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit status 1, nothing on stdout, a single `error:` line naming the problem, no traceback."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


class RunsCode:
    """A pickle payload whose unpickling would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of bad input, with a fragment its error message must contain."""
    missing = folder / "absent.safetensors"
    not_a_model = folder / "photos"
    not_a_model.mkdir()
    (not_a_model / "cat.png").write_bytes(b"png")
    whole = folder / "whole.safetensors"
    write_safetensors(whole, {"a": torch.randn(64, 64)})
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(whole.read_bytes()[:300])
    noise = folder / "noise.ckpt"
    noise.write_bytes(bytes(range(3, 251)) * 8)
    unknown = folder / "unknown.safetensors"
    write_safetensors(unknown, {"encoder.block.0.weight": torch.zeros(2)})
    unsafe = folder / "unsafe.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(folder / "ran")}, unsafe)
    return {
        "missing": (missing, "does not exist"),
        "not a model": (not_a_model, "model_index.json"),
        "truncated": (truncated, "re-download"),
        "noise": (noise, "damaged"),
        "unknown": (unknown, "encoder.block"),
        "unsafe": (unsafe, "could run code"),
    }


def test_info_prints_family_format_components_and_settings():
    result = run_cli("info", tiny_pipeline_folder("sdxl"))
    assert result.returncode == 0, result.stderr
    for expected in (
        "family: sdxl",
        "format: diffusers",
        "prediction: eps",
        "resolution: 1024",
        "text_encoder_2:",
        "scaling factor 0.13025",
        "float32",
    ):
        assert expected in result.stdout


def test_convert_to_single_file_with_dtype_then_info_and_overwrite_rules(tmp_path):
    destination = tmp_path / "model.safetensors"
    converted = run_cli("convert", tiny_pipeline_folder("sd2-v"), destination, "--dtype", "fp16")
    assert converted.returncode == 0, converted.stderr
    assert destination.is_file()
    info = run_cli("info", destination)
    assert "family: sd2-v" in info.stdout and "format: single-file" in info.stdout
    assert "prediction: v" in info.stdout and "float16" in info.stdout and "float32" not in info.stdout
    assert_one_error_line(run_cli("convert", tiny_pipeline_folder("sd1"), destination), "--overwrite")
    replaced = run_cli("convert", tiny_pipeline_folder("sd1"), destination, "--overwrite", "--dtype", "fp32")
    assert replaced.returncode == 0, replaced.stderr
    assert "family: sd1" in run_cli("info", destination).stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.safetensors"]


@pytest.mark.parametrize("case", ["missing", "not a model", "truncated", "noise", "unknown", "unsafe"])
def test_info_on_bad_input_prints_one_error_line(tmp_path, case):
    source, fragment = bad_inputs(tmp_path)[case]
    assert_one_error_line(run_cli("info", source), fragment)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    ("case", "destination"),
    [("not a model", "folder"), ("truncated", "out.safetensors"), ("unsafe", "folder")],
)
def test_convert_of_bad_input_prints_one_error_line_and_writes_nothing(tmp_path, case, destination):
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    outputs.mkdir()
    source, fragment = bad_inputs(inputs)[case]
    assert_one_error_line(run_cli("convert", source, outputs / destination), fragment)
    assert list(outputs.iterdir()) == []
    assert not (inputs / "ran").exists()
