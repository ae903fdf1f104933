"""`lienzo generate, img2img, inpaint, outpaint` in subprocesses on a tiny model: files, metadata, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from lienzo.cli import main
from lienzo.cli.generate import warn_on_other_model
from lienzo.pipelines import steps
from lienzo.pipelines.metadata import parse_parameters, read_parameters, save_png
from lienzo.pipelines.preview import LABEL_HEIGHT
from tiny_models import tiny_pipeline_folder

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "src"
FAST = ("--size", "32x32", "--steps", "2")


def run_cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -m lienzo.cli ARGS` in `cwd` with the source tree on the path."""
    environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lienzo.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=cwd, timeout=300)


def run_many(jobs: dict[str, tuple[list, Path]]) -> dict[str, subprocess.CompletedProcess]:
    """Run several CLI calls at once (each in its own folder) and return their results by name."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_cli, args, cwd) for name, (args, cwd) in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def written(result: subprocess.CompletedProcess, cwd: Path) -> list[Path]:
    """The paths a successful run printed, one per line."""
    assert result.returncode == 0, result.stderr
    return [cwd / line for line in result.stdout.split()]


@pytest.fixture(scope="module")
def model() -> Path:
    return tiny_pipeline_folder("sd1")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A 32x32 picture, its mask (white square in the middle), a smaller mask, a broken file, prompts."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "picture.png")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.new("L", (16, 16), 255).save(folder / "small-mask.png")
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    (folder / "prompts.txt").write_text("a red circle\n\n  a blue square  \n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def first_run(model, tmp_path_factory) -> tuple[Path, list[Path]]:
    """`lienzo generate` with a batch of 2 and a filmstrip, run twice in the same folder."""
    cwd = tmp_path_factory.mktemp("generate")
    args = ["generate", "a red circle, small", "-n", "blurry", *FAST, "--seed", "5", "--batch", "2"]
    first = written(run_cli([*args, "--model", model, "--preview-every", "1"], cwd), cwd)
    second = written(run_cli([*args, "--model", model], cwd), cwd)
    return cwd, first + second


def test_generate_writes_numbered_files_with_parameters_and_a_filmstrip(first_run):
    cwd, paths = first_run
    names = [path.relative_to(cwd).as_posix() for path in paths]
    assert names == [
        "outputs/00001-5.png",
        "outputs/00002-6.png",
        "outputs/00001-5-preview.png",
        "outputs/00003-5.png",
        "outputs/00004-6.png",
    ]
    record = parse_parameters(read_parameters(paths[1]))
    assert (record["prompt"], record["negative_prompt"], record["seed"]) == (
        "a red circle, small",
        "blurry",
        6,
    )
    assert (record["steps"], record["width"], record["height"], record["model"]) == (2, 32, 32, "sd1")
    with Image.open(paths[2]) as strip:
        assert strip.height == 32 + LABEL_HEIGHT and strip.width >= 2 * 32


def test_second_run_adds_files_and_reproduces_the_same_bytes(first_run):
    _, paths = first_run
    assert paths[3].read_bytes() == paths[0].read_bytes()
    assert paths[4].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[1].read_bytes()


def test_from_png_reproduces_identical_bytes_and_never_overwrites(first_run, model):
    cwd, paths = first_run
    args = ["generate", "--from-png", paths[1], "--model", model, "-o", "again.png"]
    results = run_many({run: (args, cwd) for run in ("first", "second")})
    outputs = [path for result in results.values() for path in written(result, cwd)]
    assert sorted(path.name for path in outputs) == ["again-1.png", "again.png"]
    for path in outputs:
        assert path.read_bytes() == paths[1].read_bytes()


def test_img2img_inpaint_outpaint_and_prompt_file(model, inputs, tmp_path):
    jobs = {
        "img2img": ["img2img", inputs / "picture.png", "a red circle", "--strength", "0.5"],
        "inpaint": [
            "inpaint",
            inputs / "picture.png",
            inputs / "mask.png",
            "a blue square",
            "--mask-blur",
            "0",
        ],
        "outpaint": ["outpaint", inputs / "picture.png", "sky", "--left", "16", "--top", "8"],
        "prompt-file": ["generate", "--prompt-file", inputs / "prompts.txt", *FAST],
    }
    folders = {name: tmp_path / name for name in jobs}
    for folder in folders.values():
        folder.mkdir()
    results = run_many(
        {
            name: ([*args, "--steps", "2", "--seed", "1", "--model", model], folders[name])
            for name, args in jobs.items()
        }
    )
    outputs = {name: written(result, folders[name]) for name, result in results.items()}
    source = np.asarray(Image.open(inputs / "picture.png"))

    (img2img,) = outputs["img2img"]
    assert Image.open(img2img).size == (32, 32)
    assert parse_parameters(read_parameters(img2img))["strength"] == 0.5

    (inpainted,) = outputs["inpaint"]
    pixels = np.asarray(Image.open(inpainted))
    keep = np.asarray(Image.open(inputs / "mask.png")) == 0
    assert np.array_equal(pixels[keep], source[keep]) and not np.array_equal(pixels, source)

    (outpainted,) = outputs["outpaint"]
    extended = np.asarray(Image.open(outpainted))
    assert extended.shape == (40, 48, 3)
    assert np.array_equal(extended[8:, 16:], source)

    prompts = [parse_parameters(read_parameters(path))["prompt"] for path in outputs["prompt-file"]]
    assert prompts == ["a red circle", "a blue square"]


def test_help_reads_well_with_examples(tmp_path, capsys):
    result = run_cli(["generate", "--help"], tmp_path)
    assert result.returncode == 0 and "examples:" in result.stdout and "never replaced" in result.stdout
    for name in ("img2img", "inpaint", "outpaint"):
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def bad_inputs(model: Path, inputs: Path, scratch: Path) -> dict[str, tuple[list, str]]:
    """Each kind of bad input named in the issue: its command line and a fragment its error must contain."""
    blocker = scratch / "a-file"
    blocker.write_text("x")
    picture, with_model = inputs / "picture.png", ["--model", model]
    return {
        "size not a multiple of 8": (["generate", "cat", "--size", "30x32", *with_model], "multiple of 8"),
        "mask size differs": (
            ["inpaint", picture, inputs / "small-mask.png", "cat", *with_model],
            "same size",
        ),
        "unreadable image": (["img2img", inputs / "broken.png", "cat", *with_model], "cannot read"),
        "steps 0": (["generate", "cat", "--steps", "0", *with_model], "steps must be 1 or more"),
        "strength above 1": (["img2img", picture, "cat", "--strength", "1.5", *with_model], "[0, 1]"),
        "unknown sampler": (["generate", "cat", "--sampler", "warp drive", *with_model], "unknown sampler"),
        "unwritable output": (["generate", "cat", *FAST, "-o", blocker / "sub", *with_model], "writable"),
        "missing prompt file": (
            ["generate", "--prompt-file", scratch / "nope.txt", *with_model],
            "does not exist",
        ),
    }


def more_bad_inputs(model: Path, inputs: Path, scratch: Path) -> dict[str, tuple[list, str]]:
    """Further mistakes, checked in-process through the same `main`."""
    picture, mask, with_model = inputs / "picture.png", inputs / "mask.png", ["--model", model]
    return {
        "malformed size": (["generate", "cat", "--size", "big", *with_model], "512x768"),
        "missing image": (["img2img", scratch / "absent.png", "cat", *with_model], "does not exist"),
        "strength below 0": (["inpaint", picture, mask, "cat", "--strength", "-0.1", *with_model], "[0, 1]"),
        "missing model": (
            ["generate", "cat", *FAST, "--model", scratch / "none.safetensors"],
            "none.safetensors",
        ),
        "no prompt": (["generate", *FAST, *with_model], "PROMPT"),
        "prompt and prompt file": (
            ["generate", "cat", "--prompt-file", inputs / "prompts.txt", *with_model],
            "not both",
        ),
        "outpaint margin": (["outpaint", picture, "sky", "--left", "12", *with_model], "multiple of 8"),
        "no outpaint margin": (["outpaint", picture, "sky", *with_model], "needs a margin"),
        "png without parameters": (
            ["generate", "--from-png", picture, *with_model],
            "no generation parameters",
        ),
        "img2img png for generate": (
            ["generate", "--from-png", inputs / "img2img.png", *with_model],
            "img2img",
        ),
        "hires options without scale": (
            ["generate", "cat", "--hires-steps", "4", *with_model],
            "--hires-scale",
        ),
        "preview every 0": (["generate", "cat", "--preview-every", "0", *with_model], "--preview-every"),
    }


def is_clean_error(returncode: int, stdout: str, stderr: str, fragment: str) -> bool:
    """Exit status 1, nothing on stdout, one `error:` line containing `fragment`."""
    lines = stderr.strip().splitlines()
    return (
        returncode == 1
        and not stdout
        and len(lines) == 1
        and lines[0].startswith("error: ")
        and fragment in lines[0]
    )


def test_bad_input_gives_one_error_line_and_leaves_no_file(model, inputs, tmp_path):
    cases = bad_inputs(model, inputs, tmp_path)
    folders = {name: tmp_path / f"case-{index}" for index, name in enumerate(cases)}
    for folder in folders.values():
        folder.mkdir()
    results = run_many({name: (args, folders[name]) for name, (args, _) in cases.items()})
    failures = [
        f"{name}: exit {result.returncode}, stderr {result.stderr!r}"
        for name, result in results.items()
        if not is_clean_error(result.returncode, result.stdout, result.stderr, cases[name][1])
        or list(folders[name].rglob("*.png"))
    ]
    assert not failures, "\n".join(failures)


def test_more_bad_input_in_process(model, inputs, tmp_path, monkeypatch, capsys):
    save_png(
        Image.new("RGB", (8, 8)),
        inputs / "img2img.png",
        {"prompt": "x", "steps": 2, "seed": 1, "mode": "img2img", "strength": 0.5},
    )
    monkeypatch.chdir(tmp_path)
    failures = []
    for name, (args, fragment) in more_bad_inputs(model, inputs, tmp_path).items():
        returncode = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        if not is_clean_error(returncode, captured.out, captured.err, fragment) or list(
            tmp_path.rglob("*.png")
        ):
            failures.append(f"{name}: exit {returncode}, stderr {captured.err!r}")
    assert not failures, "\n".join(failures)


def test_from_png_notes_a_different_model_hash(capsys):
    warn_on_other_model({"model_hash": "0123456789"}, SimpleNamespace(model_hash="abcdefabcd"))
    assert "0123456789" in capsys.readouterr().err
    warn_on_other_model({"model_hash": "ABCDEFABCD"}, SimpleNamespace(model_hash="abcdefabcd"))
    warn_on_other_model({}, SimpleNamespace(model_hash="abcdefabcd"))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("flag", "tiled"), [("on", True), ("off", False), ("auto", False)])
def test_vae_tiling_flag_sets_the_pipeline(model, tmp_path, monkeypatch, flag, tiled):
    calls = []
    monkeypatch.setattr(steps, "decode_tiled", lambda vae, latents: calls.append(1) or vae.decode(latents))
    monkeypatch.chdir(tmp_path)
    args = ["generate", "x", *FAST, "--seed", "1", "--model", model, "--vae-tiling", flag]
    assert main([str(arg) for arg in args]) == 0
    assert bool(calls) == tiled


def test_quiet_sampler_options_and_hires_reach_every_command(model, inputs, tmp_path, monkeypatch, capsys):
    """--quiet hides the bars; --eta/--s-noise/--sampler-option reach the sampler, are written to the PNG
    and come back with --from-png; inpaint takes the hires fix."""
    monkeypatch.chdir(tmp_path)
    model = str(model)
    ancestral = [*FAST, "--seed", "4", "--model", model, "--sampler", "euler_ancestral"]
    assert main(["generate", "x", *ancestral, "-o", "loud.png"]) == 0
    assert "base euler_ancestral" in capsys.readouterr().err
    assert main(["generate", "x", *ancestral, "-q", "-o", "quiet.png"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["generate", "x", *ancestral, "-q", "--eta", "0", "--s-noise", "0.5", "-o", "eta0.png"]) == 0
    assert main(["generate", "x", *FAST, "--seed", "4", "--model", model, "-q", "--sampler", "euler"]) == 0
    euler = Image.open(capsys.readouterr().out.split()[-1])
    quiet, eta0 = Image.open("quiet.png"), Image.open("eta0.png")
    assert eta0.tobytes() == euler.tobytes() != quiet.tobytes()
    parameters = read_parameters(Path("eta0.png"))
    assert "Eta: 0" in parameters and "Sigma noise: 0.5" in parameters
    assert parse_parameters(parameters)["sampler_options"] == {"eta": 0.0, "s_noise": 0.5}
    assert main(["generate", "--from-png", "eta0.png", "--model", model, "-q", "-o", "again.png"]) == 0
    assert Image.open("again.png").tobytes() == eta0.tobytes()
    bad = ["generate", "x", *ancestral, "-q", "--sampler-option", "order=2"]
    assert main(bad) == 1 and "no option order" in capsys.readouterr().err
    hires = [*FAST, "--seed", "1", "--model", model, "-q", "--hires-scale", "1.5", "-o", "hires.png"]
    assert main(["inpaint", str(inputs / "picture.png"), str(inputs / "mask.png"), "a circle", *hires]) == 0
    result = Image.open("hires.png")
    assert result.size == (32, 32) and "Hires upscale: 1.5" in read_parameters(Path("hires.png"))
