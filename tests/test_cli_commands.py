"""The `lienzo` command line as a whole: --version, --debug, no tracebacks, nothing left by a failed run."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import lienzo
import lienzo.cli
import lienzo.cli.models
import lienzo.cli.train
from lienzo.cli import main
from lienzo.errors import InvalidArgumentError
from lienzo.io.detect import detect_folder_family
from lienzo.io.library import BUILTIN_FOLDER
from lienzo.pipelines.output import prepare_target, reserve_paths

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "src"
ENVIRONMENT = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "OMP_NUM_THREADS": "1"}


def cli_command(*args: object) -> list[str]:
    """The command line of `python -m lienzo.cli ARGS`."""
    return [sys.executable, "-m", "lienzo.cli", *map(str, args)]


def run_cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m lienzo.cli ARGS` with the source tree on the path."""
    return subprocess.run(
        cli_command(*args), capture_output=True, text=True, env=ENVIRONMENT, cwd=cwd, timeout=120
    )


def error_lines(stderr: str) -> list[str]:
    """The lines written to stderr, without the trailing newline."""
    return stderr.strip().splitlines()


def failing_read_model(error: BaseException):
    """A stand-in for read_model that raises `error`."""

    def read_model(*args, **kwargs):
        raise error

    return read_model


def test_version_prints_the_package_version():
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"lienzo {metadata.version('lienzo')}\n"
    assert result.stderr == ""


def test_version_falls_back_to_the_package_attribute(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(lienzo.cli.metadata, "version", not_installed)
    assert lienzo.cli.version() == lienzo.__version__


def test_unexpected_error_is_one_line_without_traceback(monkeypatch, capsys):
    monkeypatch.delenv("LIENZO_DEBUG", raising=False)
    monkeypatch.setattr(lienzo.cli.models, "read_model", failing_read_model(RuntimeError("boom\n  at last")))
    assert main(["info"]) == 1
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert line.startswith("error: lienzo info failed unexpectedly with RuntimeError: boom at last;")
    assert "--debug" in line and "LIENZO_DEBUG=1" in line and "bug report" in line
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize(
    ("argv", "environment"),
    [(["--debug", "info"], None), (["info", "--debug"], None), (["info"], "1")],
)
def test_debug_flag_or_variable_shows_the_traceback(monkeypatch, capsys, argv, environment):
    if environment is None:
        monkeypatch.delenv("LIENZO_DEBUG", raising=False)
    else:
        monkeypatch.setenv("LIENZO_DEBUG", environment)
    monkeypatch.setattr(lienzo.cli.models, "read_model", failing_read_model(RuntimeError("boom")))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.strip().endswith("RuntimeError: boom") and "read_model" in err


def test_debug_variable_zero_keeps_the_one_line(monkeypatch, capsys):
    monkeypatch.setenv("LIENZO_DEBUG", "0")
    monkeypatch.setattr(lienzo.cli.models, "read_model", failing_read_model(ValueError("bad")))
    assert main(["info"]) == 1
    assert len(error_lines(capsys.readouterr().err)) == 1


def test_user_errors_stay_one_line_and_interrupts_exit_130_quietly(monkeypatch, capsys):
    monkeypatch.delenv("LIENZO_DEBUG", raising=False)
    monkeypatch.setattr(lienzo.cli.models, "read_model", failing_read_model(InvalidArgumentError("fix it")))
    assert main(["info"]) == 1
    assert capsys.readouterr().err == "error: fix it\n"
    monkeypatch.setattr(lienzo.cli.models, "read_model", failing_read_model(KeyboardInterrupt()))
    assert main(["info"]) == 130
    assert capsys.readouterr() == ("", "")


def test_info_without_a_path_describes_the_built_in_model():
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"path: {BUILTIN_FOLDER}"
    assert lines[1] == f"family: {detect_folder_family(BUILTIN_FOLDER)}" == "family: sd1"


def test_info_into_a_reader_that_closes_early_has_no_traceback():
    process = subprocess.Popen(
        cli_command("info"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENVIRONMENT
    )
    process.stdout.close()
    err = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=120) == 1
    assert err == ""


def test_generate_with_a_broken_model_leaves_no_outputs_folder(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    result = run_cli("generate", "x", "--model", "broken.safetensors", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: ") and "broken.safetensors" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.safetensors"]


def test_early_errors_create_no_output_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = [
        ["generate", "x", "--model", "absent.safetensors", "-o", "new/deeper/cat.png"],
        ["generate", "x", "--preview-every", "0", "--model", "absent.safetensors"],
        ["eval", "shapes", "--model", "absent.safetensors", "--out", "sheets/deeper"],
    ]
    for argv in runs:
        assert main(argv) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 3 and "--preview-every" in errors[1]
    assert list(tmp_path.iterdir()) == []


def test_unwritable_targets_are_refused_without_creating_anything(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for argv in (
        ["generate", "x", "-o", blocker / "sub" / "out.png"],
        ["eval", "shapes", "--out", blocker / "sub"],
        ["train", "recipe", "shapes", "--out", blocker / "sub"],
    ):
        assert main([str(arg) for arg in argv]) == 1
        (line,) = error_lines(capsys.readouterr().err)
        assert "a-file is a file" in line and ("-o" in line or "--out" in line)
    assert list(tmp_path.iterdir()) == [blocker]


def test_output_folders_are_made_only_when_files_are_written(tmp_path):
    target = prepare_target(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
    (path,) = reserve_paths(target, [7])
    assert path == tmp_path / "new" / "deeper" / "00001-7.png" and path.is_file()


def test_failed_training_removes_only_the_empty_folders_it_made(tmp_path, monkeypatch, capsys):
    def fails_after_making_folders(out, recipe, **kwargs):
        (out / "vae").mkdir(parents=True)
        raise InvalidArgumentError("stopped")

    monkeypatch.setattr(lienzo.cli.train, "run_recipe", fails_after_making_folders)
    assert main(["train", "recipe", "shapes", "--out", str(tmp_path / "runs" / "shapes")]) == 1
    assert list(tmp_path.iterdir()) == []

    def interrupted_after_a_checkpoint(out, recipe, **kwargs):
        (out / "vae").mkdir(parents=True)
        (out / "vae" / "checkpoint.pt").write_bytes(b"state")
        raise KeyboardInterrupt

    monkeypatch.setattr(lienzo.cli.train, "run_recipe", interrupted_after_a_checkpoint)
    assert main(["train", "recipe", "shapes", "--out", str(tmp_path / "runs" / "shapes")]) == 130
    assert (tmp_path / "runs" / "shapes" / "vae" / "checkpoint.pt").read_bytes() == b"state"
    assert capsys.readouterr().err == "error: stopped\n"
