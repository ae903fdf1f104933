"""Full fine-tuning: the whole UNet (and optionally the text encoder) trained with the latent diffusion loss
on a captioned folder, written back as a model in the input's format family (with EMA: the averaged
weights)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from lienzo.errors import InvalidArgumentError
from lienzo.io.checkpoints import format_for_path, read_model, write_model
from lienzo.io.model_files import ModelFiles
from lienzo.training.loop import SampleFn, train
from lienzo.training.method_run import (
    RUN_SUFFIX,
    RunOptions,
    check_trainable_family,
    diffusion_objective,
    is_main_process,
    prepare_data,
    train_config,
)
from lienzo.training.objective import Objective

SAVE_PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class FinetuneConfig:
    """What a full fine-tune trains and keeps: the text encoder too or not, an EMA of the weights (its decay;
    None: none, the raw weights are written) and the precision the model is saved in."""

    train_text_encoder: bool = False
    ema_decay: float | None = None
    save_precision: str = "fp16"

    def __post_init__(self) -> None:
        if self.save_precision not in SAVE_PRECISIONS:
            raise InvalidArgumentError(
                f"unknown --save-precision {self.save_precision!r}; use one of {', '.join(SAVE_PRECISIONS)}"
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise InvalidArgumentError(f"--ema-decay must be between 0 and 1, got {self.ema_decay}")


def model_run_folder(out: Path) -> Path:
    """The run folder beside a model output, `NAME-training/` for a folder NAME or a file NAME.safetensors,
    never inside the model."""
    stem = out.stem if out.suffix.lower() == ".safetensors" else out.name
    return out.with_name(stem + RUN_SUFFIX)


def check_model_output(out: Path, resume: bool) -> None:
    """Before any training: the output's folder is a folder (or can be made), and an existing output is
    only rewritten on resume."""
    existing = next(parent for parent in out.parents if parent.exists())
    if not existing.is_dir():
        raise InvalidArgumentError(f"{existing} is a file, not a folder; choose another --out")
    if out.exists() and not resume:
        raise InvalidArgumentError(f"{out} already exists; choose another --out, remove it, or add --resume")


def trained_model_files(model: Any) -> ModelFiles:
    """The model's files (read again from `model.path` for its VAE, tokenizers and spec) with the trained
    UNet and text encoder weights of the loaded model."""

    def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {key: value.detach().float().cpu().clone() for key, value in module.state_dict().items()}

    source = read_model(model.path)
    return replace(
        source, unet=weights(model.unet), text_encoders=[weights(encoder) for encoder in model.text_encoders]
    )


def train_model_weights(
    options: RunOptions,
    config: FinetuneConfig,
    objective: Objective,
    dataset: Any,
    model: Any,
    out: Path,
    *,
    resume: bool = False,
    sample_fn: SampleFn | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """Run the loop on the model's own weights and write the model (EMA weights with an EMA) to `out`: a
    diffusers folder, or one `.safetensors` file for that suffix, atomically, from the main process."""
    result = train(
        train_config(options, ema_decay=config.ema_decay),
        objective,
        dataset,
        model_run_folder(out),
        resume=resume,
        device=device,
        sample_fn=sample_fn,
    )
    if result.ema is not None:
        result.ema.copy_to(objective.trainable)
    if is_main_process():
        out.parent.mkdir(parents=True, exist_ok=True)
        write_model(
            trained_model_files(model),
            out,
            format=format_for_path(out),
            dtype=SAVE_PRECISIONS[config.save_precision],
            overwrite=resume,
        )
    return out


def train_finetune(
    options: RunOptions,
    config: FinetuneConfig,
    model: Any,
    out: str | Path,
    *,
    resume: bool = False,
    sample_fn: SampleFn | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """Fine-tune `model` (a loaded model in float32, e.g. a Pipeline from `load(..., cache=False)`) on
    `options.data` and write it to `out`; state, loss log and samples go to `model_run_folder(out)`."""
    out = Path(out)
    check_trainable_family(model.spec, "full fine-tuning")
    check_model_output(out, resume)
    dataset = prepare_data(options, model, model_run_folder(out))
    model.unet.requires_grad_(True).train()
    objective = diffusion_objective(options, model, dataset, train_text_encoder=config.train_text_encoder)
    return train_model_weights(
        options, config, objective, dataset, model, out, resume=resume, sample_fn=sample_fn, device=device
    )
