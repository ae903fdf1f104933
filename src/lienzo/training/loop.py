"""The one training loop: AdamW over the objective's parameter groups with warm-up, accumulation, clipping,
EMA, mixed precision, resume, DDP."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from lienzo.devices import keep_freed_memory_for_reuse
from lienzo.errors import InvalidArgumentError
from lienzo.training.batch import Batch, collate
from lienzo.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    atomic_torch_save,
    capture_rng_states,
    check_same_run,
    load_training_state,
    restore_rng_states,
)
from lienzo.training.config import TrainConfig
from lienzo.training.distributed import ProcessGroup, barrier, init_from_environment, wrap_module
from lienzo.training.ema import EMA, named_trainable_parameters
from lienzo.training.logging import LossLog
from lienzo.training.objective import Objective, ParamGroup
from lienzo.training.precision import autocast, autocast_dtype


class Dataset(Protocol):
    """Indexable items, each a dict of one sample's values (keys: `lienzo.training.objective`'s table);
    endless or with a length."""

    def __getitem__(self, index: int) -> Mapping[str, Any]: ...


SampleFn = Callable[[int, Path], None]
"""`sample_fn(step, folder)`: draw sample images with the current (EMA) weights into `folder`."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports: the last step, this process's losses, the checkpoint and the EMA.

    `ema.copy_to(objective.trainable)` puts the averaged weights into the modules for export.
    """

    step: int
    losses: list[float]
    checkpoint: Path
    ema: EMA | None


def batch_at(dataset: Dataset, indices: Sequence[int]) -> Batch:
    """The items at global sample indices (wrapping finite datasets) collated into one batch dict."""
    size = len(dataset) if hasattr(dataset, "__len__") else None
    return collate([dataset[index % size if size else index] for index in indices])


def warmup_factor(warmup_steps: int) -> Callable[[int], float]:
    """Linear learning-rate warm-up from 1/(warmup+1) to 1 over `warmup_steps` optimizer steps."""
    return lambda step: min(1.0, (step + 1) / (warmup_steps + 1))


def first_parameter_device(objective: Objective) -> torch.device:
    """The device the trainable modules live on (they must be there before training starts)."""
    for module in objective.trainable.values():
        for param in module.parameters():
            return param.device
    raise InvalidArgumentError("the objective has no trainable parameters; nothing to train")


def optimizer_groups(objective: Objective, learning_rate: float) -> list[ParamGroup]:
    """The objective's parameter groups, checked to hold every trainable parameter exactly once."""
    groups = objective.param_groups(learning_rate)
    grouped = [id(param) for group in groups for param in group["params"]]
    trainable = {id(param) for param in named_trainable_parameters(objective.trainable).values()}
    if len(grouped) != len(set(grouped)) or set(grouped) != trainable:
        raise InvalidArgumentError(
            f"{type(objective).__name__}.param_groups must hold each parameter of objective.trainable "
            "that requires grad exactly once; add the missing modules to trainable or fix the groups"
        )
    return groups


def ensure_writable(folder: Path) -> None:
    """Create `folder` and check a file can be written there, with an error that says what to do."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise InvalidArgumentError(
            f"cannot write to output folder {folder} ({error.strerror}); choose a writable --out folder"
        ) from error


def run_description(
    config: TrainConfig, objective: Objective, group: ProcessGroup, rates: list[dict[str, Any]]
) -> dict[str, Any]:
    """Everything that must match for a checkpoint to be resumed: config, models, objective, parameter
    groups (name and learning rate), world size."""
    modules = {
        name: repr(getattr(module, "config", type(module).__name__))
        for name, module in objective.trainable.items()
    }
    describe = getattr(objective, "describe", None)
    return {
        "config": config.fingerprint(),
        "modules": modules,
        "objective": describe() if describe else type(objective).__name__,
        "param_groups": rates,
        "world_size": group.world_size,
    }


class _Trainer:
    """State of one run: modules, optimizer, schedule, EMA, RNG, data position and step."""

    def __init__(self, config: TrainConfig, objective: Objective, device: torch.device, group: ProcessGroup):
        self.config, self.objective, self.device, self.group = config, objective, device, group
        self.modules = objective.trainable
        self.networks = {name: wrap_module(module, group, device) for name, module in self.modules.items()}
        optim = config.optim
        groups = optimizer_groups(objective, optim.learning_rate)
        self.rates = [{"name": entry["name"], "lr": entry["lr"]} for entry in groups]
        self.parameters = [param for entry in groups for param in entry["params"]]
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=optim.learning_rate,
            betas=optim.betas,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_factor(optim.warmup_steps))
        self.dtype = autocast_dtype(config.mixed_precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.ema = EMA(self.modules, config.ema_decay) if config.ema_decay is not None else None
        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed + group.rank)
        self.step = 0
        self.data_position = 0

    def state(self, description: dict[str, Any]) -> dict[str, Any]:
        """Everything needed to continue exactly, as tensors and plain containers."""
        return {
            "format": CHECKPOINT_FORMAT,
            "description": description,
            "step": self.step,
            "data_position": self.data_position,
            "modules": {name: module.state_dict() for name, module in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": capture_rng_states(self.generator),
        }

    def load(self, state: dict[str, Any]) -> None:
        """Restore a state written by `state` (on rank 0; every rank reads the same file)."""
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        restore_rng_states(state["rng"], self.generator)
        self.generator.set_state(state["rng"]["rank_generators"][self.group.rank])
        self.step, self.data_position = state["step"], state["data_position"]

    def train_step(self, dataset: Dataset) -> float:
        """One optimizer step over `gradient_accumulation` micro-batches; returns the mean loss."""
        config, group = self.config, self.group
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for micro in range(config.gradient_accumulation):
            start = self.data_position + group.rank * config.batch_size
            batch = batch_at(dataset, range(start, start + config.batch_size))
            self.data_position += config.batch_size * group.world_size
            syncing = micro == config.gradient_accumulation - 1
            with contextlib.ExitStack() as stack:
                if not syncing and group.is_distributed:
                    for network in self.networks.values():
                        stack.enter_context(network.no_sync())
                with autocast(self.device, self.dtype):
                    loss = self.objective.loss(batch, self.generator, self.networks)
                self.scaler.scale(loss / config.gradient_accumulation).backward()
            total += loss.detach().float() / config.gradient_accumulation
        self.scaler.unscale_(self.optimizer)
        if config.optim.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, config.optim.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.modules, self.step)
        self.step += 1
        if group.is_distributed:
            dist.all_reduce(total)
            total /= group.world_size
        return float(total)

    def gather_rank_generators(self) -> list[torch.Tensor]:
        """Every rank's training generator state, so each rank resumes its own random stream."""
        state = self.generator.get_state()
        if not self.group.is_distributed:
            return [state]
        gathered = [torch.empty_like(state) for _ in range(self.group.world_size)]
        dist.all_gather(gathered, state)
        return gathered

    @contextlib.contextmanager
    def averaged_weights(self):
        """Swap the EMA weights in for sampling and put the trained weights back afterwards."""
        if self.ema is None:
            yield
            return
        saved = [param.detach().clone() for param in self.parameters]
        self.ema.copy_to(self.modules)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.parameters, saved, strict=True):
                    param.copy_(value)


def train(
    config: TrainConfig,
    objective: Objective,
    dataset: Dataset,
    output_dir: str | Path,
    *,
    resume: bool | str | Path = False,
    device: torch.device | str | None = None,
    sample_fn: SampleFn | None = None,
) -> TrainResult:
    """Train `objective`'s modules on `dataset` for `config.steps` optimizer steps, writing to `output_dir`.

    The trainable modules must already be on `device` (default: where their parameters are).
    `resume=True` continues from output_dir's checkpoint when there is one; a path resumes from that file.
    Under torchrun the trainable modules run in DDP, data is sharded by rank and only rank 0 writes.
    """
    folder = Path(output_dir)
    device = torch.device(device) if device is not None else first_parameter_device(objective)
    group = init_from_environment(device)
    if device.type == "cpu":
        keep_freed_memory_for_reuse()
    checkpoint_path = folder / CHECKPOINT_NAME
    if group.is_main:
        ensure_writable(folder)
    trainer = _Trainer(config, objective, device, group)
    description = run_description(config, objective, group, trainer.rates)
    source = Path(resume) if isinstance(resume, str | Path) else checkpoint_path
    if resume and (source.is_file() or not isinstance(resume, bool)):
        state = load_training_state(source)
        check_same_run(state["description"], description, source)
        trainer.load(state)
    elif checkpoint_path.is_file():
        raise InvalidArgumentError(
            f"{folder} already holds a training checkpoint; resume it (--resume) or use another output folder"
        )
    log = LossLog(folder, trainer.step) if group.is_main else None
    losses: list[float] = []
    bar = tqdm(
        total=config.steps,
        initial=trainer.step,
        disable=not (config.progress_bar and group.is_main),
        unit="it",
    )
    started = time.perf_counter()
    while trainer.step < config.steps:
        loss = trainer.train_step(dataset)
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if log and (trainer.step % config.log_every == 0 or trainer.step == config.steps):
            log.append(trainer.step, loss, trainer.scheduler.get_last_lr()[0], time.perf_counter() - started)
        if sample_fn and group.is_main and config.sample_every and trainer.step % config.sample_every == 0:
            rng = capture_rng_states(trainer.generator)
            with trainer.averaged_weights():
                sample_fn(trainer.step, folder / "samples")
            restore_rng_states(rng, trainer.generator)
        if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
            rank_generators = trainer.gather_rank_generators()
            if group.is_main:
                state = trainer.state(description)
                state["rng"]["rank_generators"] = rank_generators
                atomic_torch_save(state, checkpoint_path)
                log.plot()
            barrier(group)
    bar.close()
    return TrainResult(step=trainer.step, losses=losses, checkpoint=checkpoint_path, ema=trainer.ema)
