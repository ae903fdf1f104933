"""`lienzo train dreambooth`, `hypernetwork` and `finetune` end to end at miniature size on the built-in
model: outputs that load, class images drawn once and reused, EMA weights written, exact resume, full
disks and bad input stopped with clear errors."""

from __future__ import annotations

import errno

import pytest
import torch
from PIL import Image

import lienzo
from lienzo.cli import main
from lienzo.io.checkpoints import read_model
from lienzo.io.library import BUILTIN_FOLDER
from lienzo.io.model_hash import model_identity
from lienzo.recipes.class_images import class_image_key, class_images
from lienzo.recipes.fine_tuning import write_concept_folder
from lienzo.training import checkpoint as training_checkpoint
from lienzo.training.captioned_dataset import DataConfig
from lienzo.training.checkpoint import CHECKPOINT_NAME, load_training_state
from lienzo.training.finetune import FinetuneConfig, train_finetune
from lienzo.training.hypernetwork_training import HypernetworkObjective
from lienzo.training.method_run import RunOptions
from tiny_models import tiny_pipeline_folder

QUICK = ["--batch-size", "2", "--quiet", "--cache-latents"]
PROBE = "input_blocks.3.1.proj_in.weight"


@pytest.fixture(scope="module")
def stars(tmp_path_factory):
    """Four captioned star scenes."""
    return write_concept_folder(tmp_path_factory.mktemp("stars"), "star", 4)


def base_unet():
    return read_model(BUILTIN_FOLDER).unet


class CountingPipe:
    """Stands in for a Pipeline: draws flat images and counts the calls."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def generate(self, prompt, *, width, height, seed, steps, progress):
        self.calls.append((prompt, seed))
        return [Image.new("RGB", (width, height), (seed * 40 % 256, 0, 0))]


def test_class_images_are_drawn_once_per_model_prompts_count_and_size(tmp_path):
    pipe = CountingPipe()
    folder = class_images(pipe, "hash", ["a circle", "a square"], 3, 16, tmp_path)
    assert pipe.calls == [("a circle", 0), ("a square", 1), ("a circle", 2)]
    assert [path.read_text().strip() for path in sorted(folder.glob("*.txt"))] == [
        "a circle",
        "a square",
        "a circle",
    ]
    assert class_images(pipe, "hash", ["a circle", "a square"], 3, 16, tmp_path) == folder
    assert len(pipe.calls) == 3
    keys = {
        class_image_key("hash", ["a circle", "a square"], 3, 16),
        class_image_key("other", ["a circle", "a square"], 3, 16),
        class_image_key("hash", ["a circle"], 3, 16),
        class_image_key("hash", ["a circle", "a square"], 4, 16),
        class_image_key("hash", ["a circle", "a square"], 3, 32),
        class_image_key("hash", ["a circle", "a square"], 3, 16, 2),
    }
    assert len(keys) == 6 and folder.name in keys
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_dreambooth_with_prior_preservation_writes_a_model_and_reuses_class_images(stars, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a blue background\na green square on a white background\n")
    cache = tmp_path / "cache"
    out = tmp_path / "star-model"
    common = ["train", "dreambooth", "--data", str(stars), "--instance-prompt", "a star", *QUICK]
    prior = ["--class-prompt", f"@{prompts}", "--class-images", "2", "--class-cache", str(cache)]
    prior += ["--class-steps", "2"]
    assert main([*common, *prior, "--steps", "2", "--out", str(out)]) == 0
    run = tmp_path / "star-model-training"
    assert (run / "loss.png").is_file() and (run / CHECKPOINT_NAME).is_file()
    (folder,) = cache.iterdir()
    assert folder.name == class_image_key(
        model_identity(BUILTIN_FOLDER),
        ["a red circle on a blue background", "a green square on a white background"],
        2,
        128,
        2,
    )
    drawn = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert len(drawn) == 4
    trained = read_model(out)
    assert trained.family == "sd1" and not torch.equal(trained.unet[PROBE], base_unet()[PROBE].half())
    single = tmp_path / "star.safetensors"
    assert main([*common, *prior, "--steps", "1", "--out", str(single)]) == 0
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == drawn
    assert single.is_file() and read_model(single).family == "sd1"


def test_hypernetwork_file_loads_and_changes_generation(stars, tmp_path):
    out = tmp_path / "star.pt"
    args = ["train", "hypernetwork", "--data", str(stars), "--out", str(out), "--steps", "2"]
    assert main([*args, "--layer-structure", "1,2,1", "--activation", "relu", "--dropout", *QUICK]) == 0
    assert (tmp_path / "star-training" / "loss.png").is_file()
    saved = torch.load(out, weights_only=True)
    assert saved["activation_func"] == "relu" and saved["use_dropout"] and saved["step"] == 2
    assert saved["dropout_structure"] == [0, 0.3, 0] and saved["name"] == "star"
    assert saved["sd_checkpoint"] == model_identity(BUILTIN_FOLDER)[:10]
    assert sorted(key for key in saved if isinstance(key, int)) == [128]
    pipe = lienzo.load()
    settings = {"seed": 1, "steps": 3, "progress": False}
    plain = pipe.generate("a red star on a blue background", **settings)[0]
    pipe.hypernetworks.add(out, 1.0)
    hooked = pipe.generate("a red star on a blue background", **settings)[0]
    assert plain.tobytes() != hooked.tobytes()


def test_an_interrupted_hypernetwork_run_resumes_to_the_same_file(stars, tmp_path, monkeypatch):
    args = ["--steps", "3", "--save-every", "1", *QUICK]
    whole = tmp_path / "whole.pt"
    assert main(["train", "hypernetwork", "--data", str(stars), "--out", str(whole), *args]) == 0
    calls = {"n": 0}
    original = HypernetworkObjective.loss

    def failing(self, *arguments):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *arguments)

    monkeypatch.setattr(HypernetworkObjective, "loss", failing)
    cut = tmp_path / "cut" / "whole.pt"
    cut.parent.mkdir()
    command = ["train", "hypernetwork", "--data", str(stars), "--out", str(cut), *args]
    assert main(command) != 0
    assert not cut.exists()
    assert load_training_state(cut.parent / "whole-training" / CHECKPOINT_NAME)["step"] == 2
    monkeypatch.setattr(HypernetworkObjective, "loss", original)
    assert main([*command, "--resume"]) == 0
    first, second = torch.load(whole, weights_only=True), torch.load(cut, weights_only=True)
    for k_or_v in range(2):
        for key, value in first[128][k_or_v].items():
            torch.testing.assert_close(second[128][k_or_v][key], value, rtol=0, atol=0)


def test_finetune_with_ema_writes_the_averaged_weights(stars, tmp_path):
    pipe = lienzo.load(device="cpu", dtype=torch.float32, cache=False)
    options = RunOptions(data=DataConfig(stars, resolution=128), steps=3, batch_size=2, progress=False)
    config = FinetuneConfig(ema_decay=0.5, save_precision="fp32")
    out = train_finetune(options, config, pipe, tmp_path / "tuned.safetensors")
    state = load_training_state(tmp_path / "tuned-training" / CHECKPOINT_NAME)
    written, raw, average = read_model(out).unet, state["modules"]["unet"], state["ema"]
    base = base_unet()
    assert all(torch.equal(written[key], average[f"unet.{key}"]) for key in written)
    assert not torch.equal(written[PROBE], raw[PROBE]) and not torch.equal(
        written[PROBE], base[PROBE].float()
    )


def test_a_full_disk_keeps_the_last_checkpoint(stars, tmp_path, monkeypatch, capsys):
    saves = {"n": 0}
    original = torch.save

    def filling(obj, path, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(obj, path, *args, **kwargs)

    monkeypatch.setattr(training_checkpoint.torch, "save", filling)
    out = tmp_path / "tuned"
    command = [
        "train",
        "finetune",
        "--data",
        str(stars),
        "--out",
        str(out),
        "--steps",
        "3",
        "--save-every",
        "1",
    ]
    assert main([*command, *QUICK]) == 1
    assert "disk is full" in capsys.readouterr().err
    run = tmp_path / "tuned-training"
    assert load_training_state(run / CHECKPOINT_NAME)["step"] == 1
    assert not out.exists() and not [path for path in run.iterdir() if path.name.startswith(".")]


def test_bad_input_stops_before_any_file_is_written(stars, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "runs" / "model"
    out.parent.mkdir()
    dreambooth = ["train", "dreambooth", "--instance-prompt", "a star", "--quiet"]
    assert main([*dreambooth, "--data", str(empty), "--out", str(out)]) == 1
    assert "holds no images" in capsys.readouterr().err
    sdxl = tiny_pipeline_folder("sdxl")
    for method in (dreambooth, ["train", "finetune"]):
        assert main([*method, "--data", str(stars), "--out", str(out), "--model", str(sdxl)]) == 1
        assert "supports SD 1.x and SD 2.x" in capsys.readouterr().err
    hypernetwork = ["train", "hypernetwork", "--data", str(stars), "--model", str(sdxl)]
    assert main([*hypernetwork, "--out", str(tmp_path / "runs" / "h.pt")]) == 1
    assert "supports SD 1.x and SD 2.x" in capsys.readouterr().err
    assert (
        main(["train", "hypernetwork", "--data", str(stars), "--out", str(tmp_path / "h.safetensors")]) == 1
    )
    assert "must end in .pt" in capsys.readouterr().err
    assert (
        main(["train", "hypernetwork", "--data", str(stars), "--out", str(out) + ".pt", "--widths", "7"]) == 1
    )
    assert "attention layers read widths 128" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main([*dreambooth, "--data", str(stars), "--out", str(tmp_path / "file" / "m")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main([*dreambooth, "--data", str(stars), "--out", str(out), "--class-prompt", "@missing"]) == 1
    assert "no file missing" in capsys.readouterr().err
    assert not any((tmp_path / "runs").iterdir())
