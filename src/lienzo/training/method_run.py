"""What every fine-tuning method (LoRA, textual inversion, DreamBooth, hypernetwork, full) shares: the run
options, the trainable families, the checked data, the loop's config, the objective and the run folder.

`model` arguments are a loaded model (lienzo.pipelines' Pipeline, or anything with its `spec`, `unet`,
`vae`, `text_encoders` and `tokenizers`) in float32 with frozen weights."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from lienzo.devices import default_device
from lienzo.errors import InvalidArgumentError
from lienzo.models.specs import FamilySpec
from lienzo.training.captioned_dataset import CaptionedDataset, DataConfig
from lienzo.training.config import OptimConfig, TrainConfig
from lienzo.training.gradient_checkpointing import checkpoint_text_encoder, checkpoint_unet
from lienzo.training.latent_cache import CACHE_FOLDER, cache_latents
from lienzo.training.objective import LatentDiffusionObjective

RUN_SUFFIX = "-training"
SAMPLES_FOLDER = "samples"


@dataclass(frozen=True)
class RunOptions:
    """The options every method shares (the CLI's common `lienzo train <method>` arguments).

    `learning_rate` is the default for every trained part; `unet_lr` / `text_encoder_lr` override it per
    part (a `text_encoder_lr` of 0 leaves the text encoder frozen). `save_every` steps a resumable state
    is written (a killed run loses at most that many steps); `sample_every` steps the `sample_prompts`
    are drawn into `samples/step_NNNNNN.png` beside the loss curve."""

    data: DataConfig
    model: str | Path | None = None
    steps: int = 500
    batch_size: int = 4
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    caption_dropout: float = 0.0
    cache_latents: bool = False
    gradient_checkpointing: bool = False
    save_every: int = 100
    sample_every: int = 0
    sample_prompts: tuple[str, ...] = ()
    sample_steps: int = 20
    seed: int = 0
    mixed_precision: str = "auto"
    progress: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.caption_dropout < 1.0:
            raise InvalidArgumentError(f"--caption-dropout must be in [0, 1), got {self.caption_dropout}")
        for name in ("save_every", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"--{name.replace('_', '-')} must be at least 1")
        if self.sample_every < 0:
            raise InvalidArgumentError("--sample-every must be 0 (no samples) or more")


def run_folder(out: Path) -> Path:
    """The folder beside an output file (or inside an output folder) holding the resumable state, the
    loss log and curve, the samples and the latent cache: `NAME-training/`."""
    return out.with_name(out.stem + RUN_SUFFIX) if out.suffix else out / "training"


def training_device(device: str | None = None) -> torch.device:
    """`device`, else this process's GPU under torchrun (LOCAL_RANK), else CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    device = default_device()
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def check_trainable_family(spec: FamilySpec, method: str) -> None:
    """Refuse a model whose family `method` cannot train: one text tower and plain latent input only."""
    plain = spec.unet.in_channels == spec.vae.embed_dim
    if len(spec.text_encoders) != 1 or spec.vector_conditioning is not None or not plain:
        raise InvalidArgumentError(
            f"{method} training supports SD 1.x and SD 2.x text-to-image models; this model is {spec.name} "
            "(SDXL, inpaint and depth models are not trainable yet); pass an SD1/SD2 model with --model"
        )


def train_config(options: RunOptions, *, ema_decay: float | None = None) -> TrainConfig:
    """The loop's config: AdamW without warm-up, clipping at 1, checkpoints every `save_every`."""
    return TrainConfig(
        steps=options.steps,
        batch_size=options.batch_size,
        seed=options.seed,
        optim=OptimConfig(learning_rate=options.learning_rate),
        ema_decay=ema_decay,
        mixed_precision=options.mixed_precision,
        checkpoint_every=options.save_every,
        sample_every=options.sample_every if options.sample_prompts else 0,
        log_every=1,
        progress_bar=options.progress,
    )


def prepare_data(options: RunOptions, model, folder: Path) -> CaptionedDataset:
    """The checked dataset; with `cache_latents` its images are encoded once into `folder/latent_cache`."""
    dataset = CaptionedDataset(options.data, options.batch_size)
    if options.cache_latents:
        cache_latents(dataset, model.vae, folder / CACHE_FOLDER)
    return dataset


def diffusion_objective(
    options: RunOptions,
    model,
    dataset: CaptionedDataset,
    *,
    objective_class: type[LatentDiffusionObjective] = LatentDiffusionObjective,
    train_text_encoder: bool = False,
    checkpoint_text: bool = False,
) -> LatentDiffusionObjective:
    """The latent diffusion loss over the model's networks (the family's prediction and schedule), with
    gradient checkpointing on the UNet (and on the text encoder when `checkpoint_text`) if asked."""
    if options.gradient_checkpointing:
        checkpoint_unet(model.unet)
        if checkpoint_text or train_text_encoder:
            checkpoint_text_encoder(model.text_encoders[0])
    return objective_class(
        model.unet,
        model.vae,
        model.text_encoders[0],
        model.tokenizers[0],
        spec=model.spec,
        train_text_encoder=train_text_encoder,
        caption_dropout=options.caption_dropout,
        encoded_inputs=dataset.latents is not None,
        unet_lr=options.unet_lr,
        text_encoder_lr=options.text_encoder_lr if train_text_encoder else None,
    )


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 under it: the one process that writes the output file."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def check_output_file(out: Path, suffixes: tuple[str, ...], option: str = "--out") -> None:
    """The output file's suffix is one of `suffixes` and its folder exists or can be made."""
    if out.suffix.lower() not in suffixes:
        raise InvalidArgumentError(f"{option} {out} must end in {' or '.join(suffixes)}")
    if out.is_dir():
        raise InvalidArgumentError(
            f"{option} {out} is a folder; give a file name such as {out / 'x'}{suffixes[0]}"
        )
