"""Training loop: the diffusion objective reduces its loss, checkpoints are atomic, bad input is refused."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lienzo.diffusion import EpsPrediction, VPrediction
from lienzo.errors import InvalidArgumentError
from lienzo.models.clip import CLIPTextConfig, CLIPTextModel
from lienzo.models.specs import SD1
from lienzo.models.unet import UNetConfig, UNetModel
from lienzo.models.vae import AutoencoderKL, VAEConfig
from lienzo.text.tokenizer import CLIPTokenizer
from lienzo.training import LatentDiffusionObjective, OptimConfig, TrainConfig, collate, train
from lienzo.training.checkpoint import CHECKPOINT_NAME, atomic_torch_save, load_training_state
from lienzo.training.ema import EMA
from lienzo.training.logging import CSV_NAME, PLOT_NAME, read_loss_csv
from lienzo.training.objective import drop_captions

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {"red": (1.0, -0.6, -0.6), "green": (-0.6, 0.6, -0.6), "blue": (-0.6, -0.6, 1.0)}
PLACES = {"left": 2, "right": 18}


class SquaresDataset:
    """Seeded coloured squares on grey, 32x32, captioned "a <colour> square on the <side>"."""

    def __init__(self, size: int = 32):
        self.size = size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        colour = list(COLOURS)[index % 3]
        place = list(PLACES)[(index // 3) % 2]
        image = torch.zeros(3, self.size, self.size)
        left = PLACES[place]
        image[:, 8:20, left : left + 12] = torch.tensor(COLOURS[colour]).view(3, 1, 1)
        return {"image": image, "caption": f"a {colour} square on the {place}"}


def tiny_objective(prediction: str = "eps", train_text_encoder: bool = False, seed: int = 0, **options):
    """A tiny UNet (32 channels), VAE (32x32 -> 4x8x8) and CLIP tower with seeded random weights;
    `options` go to LatentDiffusionObjective (e.g. unet_lr, text_encoder_lr)."""
    torch.manual_seed(seed)
    clip = CLIPTextModel(
        CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    )
    vae = AutoencoderKL(VAEConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=4))
    unet = UNetModel(
        UNetConfig(
            model_channels=32,
            channel_mult=(1, 2),
            num_res_blocks=1,
            transformer_depth=(0, 1),
            transformer_depth_middle=1,
            num_heads=2,
            context_dim=32,
            norm_groups=16,
        )
    )
    return LatentDiffusionObjective(
        unet,
        vae,
        clip,
        CLIPTokenizer.from_bundled(),
        spec=replace(SD1, prediction=prediction),
        latent_scale=1.0,
        train_text_encoder=train_text_encoder,
        **options,
    )


def quick_config(steps: int, **changes) -> TrainConfig:
    """A few-step config on batches of 4 with fp32 math, no progress bar."""
    values = dict(
        steps=steps,
        batch_size=4,
        optim=OptimConfig(learning_rate=3e-3, warmup_steps=2),
        ema_decay=0.9,
        mixed_precision="no",
        checkpoint_every=100,
        progress_bar=False,
    )
    values.update(changes)
    return TrainConfig(**values)


def fixed_batch_loss(objective: LatentDiffusionObjective) -> float:
    """The objective on one fixed batch with fixed noise (no caption dropout)."""
    batch = collate([SquaresDataset()[i] for i in range(6)])
    generator = torch.Generator().manual_seed(123)
    dropout = objective.caption_dropout
    objective.caption_dropout = 0.0
    with torch.no_grad():
        losses = [objective.loss(batch, generator, {}) for _ in range(4)]
    objective.caption_dropout = dropout
    return float(torch.stack(losses).mean())


@pytest.mark.parametrize(("prediction", "at_most"), [("eps", 0.8), ("v", 0.93)])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tmp_path: Path, prediction: str, at_most: float):
    objective = tiny_objective(prediction, train_text_encoder=True)
    before = fixed_batch_loss(objective)
    result = train(quick_config(30), objective, SquaresDataset(), tmp_path)
    after = fixed_batch_loss(objective)
    assert result.step == 30 and len(result.losses) == 30
    assert after < at_most * before, (before, after)


def test_objective_uses_the_samplers_parameterization():
    assert isinstance(tiny_objective("eps").parameterization, EpsPrediction)
    assert isinstance(tiny_objective("v").parameterization, VPrediction)


def test_v_objective_matches_the_velocity_target_by_hand():
    objective = tiny_objective("v")
    batch = collate([SquaresDataset()[i] for i in range(2)])
    images = batch["image"]
    seen = {}

    def recording_unet(x, t, cond):
        seen.update(x=x, t=t)
        return torch.zeros_like(x)

    objective.caption_dropout = 0.0
    loss = objective.loss(batch, torch.Generator().manual_seed(5), {"unet": recording_unet})
    generator = torch.Generator().manual_seed(5)
    latents = objective.vae.encode(images).sample(generator) * objective.latent_scale
    t = torch.randint(0, 1000, (2,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    alpha_bar = objective.model_sampling.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    noisy_vp = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    velocity = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    torch.testing.assert_close(seen["x"], noisy_vp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen["t"], t.float(), atol=1e-3, rtol=0)
    torch.testing.assert_close(loss, velocity.pow(2).mean(), atol=1e-6, rtol=1e-5)


def test_zero_text_encoder_lr_leaves_it_unchanged_while_the_unet_moves(tmp_path: Path):
    objective = tiny_objective(train_text_encoder=True, unet_lr=1e-3, text_encoder_lr=0.0)
    assert [(g["name"], g["lr"]) for g in objective.param_groups(3e-3)] == [
        ("unet", 1e-3),
        ("text_encoder", 0.0),
    ]
    unet_before = {key: value.clone() for key, value in objective.unet.state_dict().items()}
    text_before = {key: value.clone() for key, value in objective.text_encoder.state_dict().items()}
    train(quick_config(2), objective, SquaresDataset(), tmp_path)
    for key, value in objective.text_encoder.state_dict().items():
        assert torch.equal(value, text_before[key]), key
    assert not torch.equal(objective.unet.out[2].weight, unet_before["out.2.weight"])
    groups = load_training_state(tmp_path / CHECKPOINT_NAME)["optimizer"]["param_groups"]
    assert [(g["name"], g["initial_lr"]) for g in groups] == [("unet", 1e-3), ("text_encoder", 0.0)]


def test_each_group_moves_by_its_own_learning_rate(tmp_path: Path):
    """Adam's first step moves every weight with a clear gradient by lr (Kingma & Ba 2015, sec. 2.1),
    here times the warm-up factor 1/3; the learning rates left unset are the config's."""
    objective = tiny_objective(train_text_encoder=True, text_encoder_lr=1e-2)
    before = {
        name: [p.detach().clone() for p in module.parameters()]
        for name, module in objective.trainable.items()
    }
    optim = OptimConfig(learning_rate=1e-3, warmup_steps=2, weight_decay=0.0)
    train(quick_config(1, optim=optim, ema_decay=None), objective, SquaresDataset(), tmp_path)
    for name, rate in (("unet", 1e-3), ("text_encoder", 1e-2)):
        moved = max(
            float((param.detach() - old).abs().max())
            for param, old in zip(objective.trainable[name].parameters(), before[name], strict=True)
        )
        assert moved == pytest.approx(rate / 3, rel=1e-3), name


def test_param_groups_must_cover_the_trainable_parameters(tmp_path: Path):
    objective = tiny_objective(train_text_encoder=True)
    objective.param_groups = lambda learning_rate: LatentDiffusionObjective.param_groups(
        objective, learning_rate
    )[:1]
    with pytest.raises(InvalidArgumentError, match="param_groups must hold each parameter"):
        train(quick_config(1), objective, SquaresDataset(), tmp_path)
    with pytest.raises(InvalidArgumentError, match="train_text_encoder=True"):
        tiny_objective(text_encoder_lr=1e-4)
    with pytest.raises(InvalidArgumentError, match="unet_lr must be 0 or more"):
        tiny_objective(unet_lr=-1.0)


def test_caption_dropout_empties_about_the_configured_share():
    captions = drop_captions(["x"] * 2000, 0.1, torch.Generator().manual_seed(0))
    assert 150 < captions.count("") < 250


def test_loss_log_and_curve_are_written(tmp_path: Path):
    train(quick_config(4), tiny_objective(), SquaresDataset(), tmp_path)
    rows = read_loss_csv(tmp_path / CSV_NAME)
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4]
    assert all(float(row["loss"]) > 0 for row in rows)
    assert (tmp_path / PLOT_NAME).read_bytes().startswith(b"\x89PNG")
    state = load_training_state(tmp_path / CHECKPOINT_NAME)
    assert state["step"] == 4 and state["data_position"] == 16


def test_sample_fn_sees_ema_weights_and_training_weights_come_back(tmp_path: Path):
    objective = tiny_objective()
    seen = []

    def sample_fn(step: int, folder: Path) -> None:
        seen.append((step, objective.unet.out[2].weight.detach().clone()))

    result = train(
        quick_config(4, sample_every=2), objective, SquaresDataset(), tmp_path, sample_fn=sample_fn
    )
    state = load_training_state(tmp_path / CHECKPOINT_NAME)
    torch.testing.assert_close(
        result.ema.state_dict()["unet.out.2.weight"], state["ema"]["unet.out.2.weight"]
    )
    assert [step for step, _ in seen] == [2, 4]
    torch.testing.assert_close(seen[-1][1], state["ema"]["unet.out.2.weight"])
    torch.testing.assert_close(objective.unet.out[2].weight, state["modules"]["unet"]["out.2.weight"])
    assert not torch.equal(seen[-1][1], objective.unet.out[2].weight)


def test_gradient_accumulation_consumes_more_data_per_step(tmp_path: Path):
    train(quick_config(2, gradient_accumulation=3), tiny_objective(), SquaresDataset(), tmp_path)
    assert load_training_state(tmp_path / CHECKPOINT_NAME)["data_position"] == 2 * 3 * 4


def test_failure_mid_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / CHECKPOINT_NAME
    atomic_torch_save({"format": "lienzo-training-state-1", "step": 1}, path)

    def failing_save(state, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"format": "lienzo-training-state-1", "step": 2}, path)
    monkeypatch.undo()
    assert load_training_state(path)["step"] == 1
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]


def test_unwritable_output_folder_is_a_clear_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InvalidArgumentError, match="writable"):
        train(quick_config(1), tiny_objective(), SquaresDataset(), blocker / "run")


def test_existing_checkpoint_is_not_overwritten_without_resume(tmp_path: Path):
    train(quick_config(1), tiny_objective(), SquaresDataset(), tmp_path)
    before = (tmp_path / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(InvalidArgumentError, match="resume"):
        train(quick_config(1), tiny_objective(), SquaresDataset(), tmp_path)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == before


def test_bad_config_values_are_refused():
    with pytest.raises(InvalidArgumentError, match="mixed precision"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_bf16_autocast_keeps_fp32_master_weights(tmp_path: Path):
    objective = tiny_objective()
    result = train(quick_config(2, mixed_precision="bf16"), objective, SquaresDataset(), tmp_path)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert all(param.dtype == torch.float32 for param in objective.unet.parameters())


def test_fp16_on_cpu_is_refused(tmp_path: Path):
    with pytest.raises(InvalidArgumentError, match="CUDA"):
        train(quick_config(1, mixed_precision="fp16"), tiny_objective(), SquaresDataset(), tmp_path)


def test_trains_on_the_shapes_world_dataset(tmp_path: Path):
    from lienzo.worlds.dataset import ShapesDataConfig, ShapesDataset

    dataset = ShapesDataset(ShapesDataConfig(seed=3, resolution=32))
    result = train(quick_config(2), tiny_objective(), dataset, tmp_path)
    assert result.step == 2 and all(loss > 0 for loss in result.losses)
    assert load_training_state(result.checkpoint)["data_position"] == 8


def test_ema_warm_up_forgets_the_initial_weights():
    param = torch.nn.Parameter(torch.zeros(3))
    module = torch.nn.Module()
    module.weight = param
    ema = EMA({"m": module}, decay=0.999)
    with torch.no_grad():
        param.fill_(1.0)
    ema.update({"m": module}, updates_before=0)
    torch.testing.assert_close(ema.shadow["m.weight"], torch.full((3,), 0.9))
    for step in range(1, 2000):
        ema.update({"m": module}, updates_before=step)
    assert float(ema.shadow["m.weight"][0]) == pytest.approx(1.0, abs=1e-6)
