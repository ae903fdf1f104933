"""Training: one loop (AdamW, EMA, mixed precision, exact resume, DDP) and its objectives."""

from __future__ import annotations

from lienzo.training.batch import Batch, collate
from lienzo.training.config import OptimConfig, TrainConfig
from lienzo.training.loop import TrainResult, train
from lienzo.training.objective import LatentDiffusionObjective, Objective, ParamGroup
from lienzo.training.tokenizer_training import read_trained_tokenizer, train_clip_tokenizer
from lienzo.training.vae_training import VAEObjective, latent_scaling_factor

__all__ = [
    "Batch",
    "LatentDiffusionObjective",
    "Objective",
    "OptimConfig",
    "ParamGroup",
    "TrainConfig",
    "TrainResult",
    "VAEObjective",
    "collate",
    "latent_scaling_factor",
    "read_trained_tokenizer",
    "train",
    "train_clip_tokenizer",
]
