"""Prior preservation in `lienzo train lora` and `lienzo train hypernetwork` at miniature size on the built-in
model: the class images are drawn once and shared, their loss changes what is trained, weight 0 turns them
off, and the LoRA's kohya header counts them."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lienzo.cli import main
from lienzo.recipes.fine_tuning import write_concept_folder

QUICK = ["--steps", "2", "--batch-size", "2", "--quiet", "--cache-latents"]


@pytest.fixture(scope="module")
def stars(tmp_path_factory):
    """Four captioned star scenes."""
    return write_concept_folder(tmp_path_factory.mktemp("stars"), "star", 4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The class image cache the runs share."""
    return tmp_path_factory.mktemp("prior") / "cache"


@pytest.fixture(scope="module")
def prior(tmp_path_factory, cache):
    """Class prompt arguments: two base-world prompts, two class images of two sampling steps."""
    prompts = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    prompts.write_text("a red circle on a blue background\na green square on a white background\n")
    drawing = ["--class-images", "2", "--class-steps", "2", "--class-cache", str(cache)]
    return ["--class-prompt", f"@{prompts}", *drawing]


def lora(stars, out, *extra) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    assert main(["train", "lora", "--data", str(stars), "--out", str(out), *QUICK, *extra]) == 0
    with safe_open(out, "pt") as handle:
        metadata = handle.metadata()
    return load_file(out), metadata


def test_lora_class_images_change_the_training_and_are_counted(stars, prior, cache, tmp_path):
    plain, plain_metadata = lora(stars, tmp_path / "plain.safetensors")
    assert plain_metadata["ss_num_reg_images"] == "0"
    off, _ = lora(stars, tmp_path / "off.safetensors", *prior, "--prior-loss-weight", "0")
    assert not cache.exists()
    assert all(torch.equal(off[key], plain[key]) for key in plain)
    kept, metadata = lora(stars, tmp_path / "kept.safetensors", *prior, "--prior-loss-weight", "0.5")
    assert metadata["ss_num_reg_images"] == "2" and metadata["ss_prior_loss_weight"] == "0.5"
    assert kept.keys() == plain.keys() and any(not torch.equal(kept[key], plain[key]) for key in plain)
    (drawn,) = cache.iterdir()
    assert sorted(path.suffix for path in drawn.iterdir()) == [".png", ".png", ".txt", ".txt"]


def test_hypernetwork_class_images_change_the_training(stars, prior, tmp_path):
    layers = {}
    for name, extra in (("plain", []), ("kept", prior)):
        out = tmp_path / f"{name}.pt"
        assert main(["train", "hypernetwork", "--data", str(stars), "--out", str(out), *QUICK, *extra]) == 0
        layers[name] = torch.load(out, weights_only=True)[128]
    pairs = zip(layers["plain"], layers["kept"], strict=True)
    assert any(not torch.equal(a[key], b[key]) for a, b in pairs for key in a)
