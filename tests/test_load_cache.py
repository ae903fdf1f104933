"""`lienzo.load` keeps the last model: same files and settings → same networks, fresh Pipeline settings."""

from __future__ import annotations

import os
import shutil

import torch

import lienzo
from lienzo.adapters import WeightPatch
from tiny_models import tiny_pipeline_folder


def test_loading_again_shares_the_weights_in_views_of_their_own():
    first = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    again = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    assert again is not first and again.unet is not first.unet
    assert again.vae is first.vae
    for (name, weight), other in zip(
        first.unet.state_dict().items(), again.unet.state_dict().values(), strict=True
    ):
        assert weight.data_ptr() == other.data_ptr(), name


def test_patching_one_pipeline_leaves_another_untouched_and_unpatching_restores_it():
    first = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    second = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    settings = {"steps": 2, "seed": 1, "width": 32, "height": 32, "progress": False}
    before = second.generate("a circle", **settings)[0].tobytes()
    name = "out.2.weight"
    original = first.unet.get_parameter(name)
    first.unet_patcher.add("half", [WeightPatch((name,), lambda weight: torch.full_like(weight, 0.5))])
    assert torch.equal(first.unet.get_parameter(name), original.float() + 0.5)
    assert second.unet.get_parameter(name) is original
    assert first.generate("a circle", **settings)[0].tobytes() != before
    assert second.generate("a circle", **settings)[0].tobytes() == before
    third = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    assert third.unet.get_parameter(name) is original
    first.unet_patcher.unpatch()
    assert first.unet.get_parameter(name) is original
    assert first.generate("a circle", **settings)[0].tobytes() == before


def test_the_refiner_does_not_evict_the_base():
    base = lienzo.load(tiny_pipeline_folder("sdxl"), device="cpu", dtype=torch.float32)
    lienzo.load(tiny_pipeline_folder("sdxl-refiner"), device="cpu", dtype=torch.float32)
    again = lienzo.load(tiny_pipeline_folder("sdxl"), device="cpu", dtype=torch.float32)
    assert again.vae is base.vae


def test_other_settings_or_no_cache_load_new_networks():
    base = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    assert lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.bfloat16).unet is not base.unet
    assert lienzo.load(
        tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32, cache=False
    ).unet is not (lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32).unet)


def test_changed_files_are_read_again(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_folder("sd1"), folder)
    before = lienzo.load(folder, device="cpu", dtype=torch.float32)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = lienzo.load(folder, device="cpu", dtype=torch.float32)
    assert after.unet is not before.unet
    for name, value in before.unet.state_dict().items():
        assert torch.equal(value, after.unet.state_dict()[name])
