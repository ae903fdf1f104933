"""The noise schedule and prediction travel with the model: read from and written to diffusers folders
and lienzo's single files, read back by diffusers' own schedulers."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from lienzo.diffusion.schedules import alphas_cumprod_for
from lienzo.errors import UnknownArchitectureError
from lienzo.io import read_model, write_model, write_safetensors
from lienzo.io.keymaps.scheduler import scheduler_to_diffusers
from lienzo.io.single_file import join_single_file
from lienzo.models.specs import NoiseScheduleConfig, family_spec
from tiny_models import tiny_pipeline_folder

ZERO_SNR = NoiseScheduleConfig(linear_end=0.0125, zero_terminal_snr=True)
SCHEDULES = [
    ZERO_SNR,
    NoiseScheduleConfig(beta_schedule="linear", timesteps=500, linear_start=0.0001, linear_end=0.02),
    NoiseScheduleConfig(beta_schedule="cosine"),
]


def with_schedule(family: str, schedule: NoiseScheduleConfig):
    """The tiny model of `family` read as ModelFiles, with `schedule` in its spec."""
    files = read_model(tiny_pipeline_folder(family))
    files.spec = replace(files.spec, schedule=schedule)
    return files


def test_folder_round_trip_keeps_schedule_and_prediction(tmp_path):
    files = with_schedule("sd2-v", ZERO_SNR)
    folder = write_model(files, tmp_path / "model")
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["rescale_betas_zero_snr"] and config["timestep_spacing"] == "trailing"
    assert config["prediction_type"] == "v_prediction" and config["beta_end"] == 0.0125
    back = read_model(folder)
    assert back.spec.schedule == ZERO_SNR
    assert back.family == "sd2-v" and back.spec.prediction == "v"


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.beta_schedule)
def test_diffusers_reads_the_same_betas(schedule):
    import diffusers

    spec = replace(family_spec("sd1"), schedule=schedule)
    theirs = diffusers.DDPMScheduler.from_config(scheduler_to_diffusers(spec)).alphas_cumprod
    assert torch.allclose(theirs.double(), alphas_cumprod_for(schedule), atol=1e-6)


def test_written_scheduler_folder_loads_in_diffusers(tmp_path):
    import diffusers

    folder = write_model(with_schedule("sd1", ZERO_SNR), tmp_path / "model")
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    assert scheduler.config.rescale_betas_zero_snr and scheduler.config.beta_end == 0.0125
    assert torch.allclose(scheduler.alphas_cumprod.double(), alphas_cumprod_for(ZERO_SNR), atol=1e-6)


def copied_folder(tmp_path, scheduler_changes: dict):
    """A copy of the tiny sd1 folder with its scheduler config updated."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_folder("sd1"), folder)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **scheduler_changes}))
    return folder


def test_unknown_beta_schedule_names_the_supported_ones(tmp_path):
    folder = copied_folder(tmp_path, {"beta_schedule": "sigmoid"})
    with pytest.raises(UnknownArchitectureError, match="'sigmoid'") as caught:
        read_model(folder)
    assert "scheduler_config.json" in str(caught.value)
    assert "scaled_linear, linear, squaredcos_cap_v2" in str(caught.value)


def test_trained_betas_are_refused_and_missing_settings_keep_family_defaults(tmp_path):
    with pytest.raises(UnknownArchitectureError, match="trained_betas"):
        read_model(copied_folder(tmp_path / "a", {"trained_betas": [0.001] * 1000}))
    folder = copied_folder(tmp_path / "b", {"beta_schedule": "squaredcos_cap_v2"})
    assert read_model(folder).spec.schedule == NoiseScheduleConfig(beta_schedule="cosine")
    shutil.rmtree(folder / "scheduler")
    assert read_model(folder).spec.schedule == family_spec("sd1").schedule


def test_single_files_keep_the_schedule_in_metadata_or_read_zero_snr_from_alphas_cumprod(tmp_path):
    files = with_schedule("sd1", ZERO_SNR)
    assert read_model(write_model(files, tmp_path / "model.safetensors")).spec.schedule == ZERO_SNR
    ldm = join_single_file(files)
    for name, schedule in [("sd.safetensors", NoiseScheduleConfig()), ("zsnr.safetensors", ZERO_SNR)]:
        write_safetensors(tmp_path / name, {**ldm, "alphas_cumprod": alphas_cumprod_for(schedule).float()})
    assert read_model(tmp_path / "sd.safetensors").spec.schedule == family_spec("sd1").schedule
    zsnr = read_model(tmp_path / "zsnr.safetensors").spec.schedule
    assert zsnr == replace(family_spec("sd1").schedule, zero_terminal_snr=True)
