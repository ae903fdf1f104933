"""Training: one loop (AdamW, EMA, mixed precision, exact resume, DDP) and its objectives."""

from __future__ import annotations

from lienzo.training.config import OptimConfig, TrainConfig
from lienzo.training.loop import TrainResult, train
from lienzo.training.objective import LatentDiffusionObjective, Objective

__all__ = ["LatentDiffusionObjective", "Objective", "OptimConfig", "TrainConfig", "TrainResult", "train"]
