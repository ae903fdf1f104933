"""`lienzo.load` keeps the last model: same files and settings → same networks, fresh Pipeline settings."""

from __future__ import annotations

import os
import shutil

import torch

import lienzo
from tiny_models import tiny_pipeline_folder


def test_loading_again_reuses_the_networks_but_not_the_settings():
    first = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    again = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    assert again is not first
    assert again.unet is first.unet and again.vae is first.vae
    first.progress = False
    assert again.progress is True


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
