"""Typed configs of a training run: optimizer, schedule, precision, intervals."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lienzo.errors import InvalidArgumentError

MIXED_PRECISION_MODES = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW (Loshchilov & Hutter 2019) with a linear warm-up to a constant learning rate."""

    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """How long and how a run trains; everything that changes the numbers of a run lives here."""

    steps: int = 1000
    batch_size: int = 8
    gradient_accumulation: int = 1
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema_decay: float | None = 0.999
    mixed_precision: str = "auto"
    checkpoint_every: int = 500
    sample_every: int = 0
    log_every: int = 1
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION_MODES:
            raise InvalidArgumentError(
                f"unknown mixed precision {self.mixed_precision!r}; "
                f"use one of: {', '.join(MIXED_PRECISION_MODES)}"
            )
        for name in ("steps", "batch_size", "gradient_accumulation"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise InvalidArgumentError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}")

    def fingerprint(self) -> dict:
        """The fields a resumed run must share with the run that wrote the checkpoint."""
        values = asdict(self)
        for free in ("steps", "checkpoint_every", "sample_every", "log_every", "progress_bar"):
            values.pop(free)
        values["optim"]["betas"] = list(values["optim"]["betas"])
        return values
