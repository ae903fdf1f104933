"""Resuming a run: an interrupted and resumed run equals an uninterrupted one bit for bit on CPU."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lienzo.errors import CorruptCheckpointError, InvalidArgumentError
from lienzo.training import OptimConfig, train
from lienzo.training.checkpoint import CHECKPOINT_NAME, load_training_state
from lienzo.training.logging import CSV_NAME, read_loss_csv
from test_training import SquaresDataset, quick_config, tiny_objective

pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupted(Exception):
    """Stands for a run killed between two checkpoints."""


def interrupt_at(step: int):
    """A sample_fn that stops the run when it reaches `step`."""

    def sample_fn(current: int, folder: Path) -> None:
        if current == step:
            raise Interrupted

    return sample_fn


def assert_same_state(first: dict, second: dict) -> None:
    """Every tensor of two training states equal bit for bit (step, data position, RNG included)."""
    assert first["step"] == second["step"] and first["data_position"] == second["data_position"]
    for name in first["modules"]:
        for key, value in first["modules"][name].items():
            assert torch.equal(value, second["modules"][name][key]), (name, key)
    for key, value in first["ema"].items():
        assert torch.equal(value, second["ema"][key]), key
    for index, state in first["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, second["optimizer"]["state"][index][key]), (index, key)
    assert first["optimizer"]["param_groups"] == second["optimizer"]["param_groups"]
    assert first["scheduler"] == second["scheduler"]
    assert torch.equal(first["rng"]["generator"], second["rng"]["generator"])
    assert torch.equal(first["rng"]["torch"], second["rng"]["torch"])


def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path: Path):
    config = quick_config(6, checkpoint_every=3, sample_every=1, gradient_accumulation=2)
    whole = train(config, tiny_objective(train_text_encoder=True), SquaresDataset(), tmp_path / "whole")

    folder = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        train(
            config,
            tiny_objective(train_text_encoder=True),
            SquaresDataset(),
            folder,
            sample_fn=interrupt_at(5),
        )
    assert load_training_state(folder / CHECKPOINT_NAME)["step"] == 3
    fresh = tiny_objective(train_text_encoder=True)
    with torch.no_grad():
        for param in fresh.unet.parameters():
            param.add_(1.0)
    resumed = train(config, fresh, SquaresDataset(), folder, resume=True)

    assert resumed.losses == whole.losses[3:]
    assert_same_state(load_training_state(whole.checkpoint), load_training_state(resumed.checkpoint))
    assert [int(row["step"]) for row in read_loss_csv(folder / CSV_NAME)] == list(range(1, 7))
    resumed_log = [row["loss"] for row in read_loss_csv(folder / CSV_NAME)]
    assert resumed_log == [row["loss"] for row in read_loss_csv(tmp_path / "whole" / CSV_NAME)]


def test_resume_restores_each_parameter_groups_learning_rate_and_state(tmp_path: Path):
    config = quick_config(
        4, checkpoint_every=2, sample_every=1, optim=OptimConfig(learning_rate=3e-3, warmup_steps=4)
    )
    rates = {"unet_lr": 2e-3, "text_encoder_lr": 5e-4}
    whole = train(
        config, tiny_objective(train_text_encoder=True, **rates), SquaresDataset(), tmp_path / "whole"
    )
    folder = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        train(
            config,
            tiny_objective(train_text_encoder=True, **rates),
            SquaresDataset(),
            folder,
            sample_fn=interrupt_at(3),
        )
    groups = load_training_state(folder / CHECKPOINT_NAME)["optimizer"]["param_groups"]
    assert [(g["name"], g["initial_lr"]) for g in groups] == [("unet", 2e-3), ("text_encoder", 5e-4)]
    assert [g["lr"] for g in groups] == pytest.approx([2e-3 * 3 / 5, 5e-4 * 3 / 5]), "mid warm-up"
    with pytest.raises(InvalidArgumentError, match="different configuration.*param_groups"):
        train(
            config,
            tiny_objective(train_text_encoder=True, unet_lr=2e-3),
            SquaresDataset(),
            folder,
            resume=True,
        )
    resumed = train(
        config, tiny_objective(train_text_encoder=True, **rates), SquaresDataset(), folder, resume=True
    )
    assert resumed.losses == whole.losses[2:]
    assert_same_state(load_training_state(whole.checkpoint), load_training_state(resumed.checkpoint))


def test_resume_from_another_config_is_a_clear_error(tmp_path: Path):
    config = quick_config(1)
    train(config, tiny_objective(), SquaresDataset(), tmp_path)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    other_optim = replace(config, steps=2, optim=OptimConfig(learning_rate=0.5))
    with pytest.raises(InvalidArgumentError, match="different configuration.*config"):
        train(other_optim, tiny_objective(), SquaresDataset(), tmp_path, resume=True)
    with pytest.raises(InvalidArgumentError, match="different configuration.*objective"):
        train(replace(config, steps=2), tiny_objective("v"), SquaresDataset(), tmp_path, resume=True)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


def test_resume_from_a_broken_file_is_a_clear_error(tmp_path: Path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptCheckpointError, match="cannot be read"):
        train(quick_config(1), tiny_objective(), SquaresDataset(), tmp_path / "run", resume=broken)
    with pytest.raises(InvalidArgumentError, match="no training checkpoint"):
        train(
            quick_config(1),
            tiny_objective(),
            SquaresDataset(),
            tmp_path / "run",
            resume=tmp_path / "missing.pt",
        )
