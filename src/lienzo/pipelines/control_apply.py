"""The residuals ControlNet units add to each model call (Zhang et al. 2023): which units act at the
call's sampling step, each unit's scales by control mode, their sum in `Conditioning.control`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from lienzo.diffusion import Conditioning, ControlResiduals, ModelSampling
from lienzo.models.controlnet import ControlNet
from lienzo.pipelines.control_units import PROMPT_MODE_DECAY, ControlUnit, acts_at
from lienzo.pipelines.steps import step_at


@dataclass(frozen=True, eq=False)
class ControlHint:
    """One unit at one pass size: its settings, its network and its control image tensor."""

    unit: ControlUnit
    model: ControlNet
    hint: torch.Tensor


def residual_scales(mode: str, strength: float, count: int) -> list[float]:
    """Scale of each of `count` residuals (skips, then the middle) in a control mode."""
    if mode == "prompt":
        return [strength * PROMPT_MODE_DECAY ** (count - 1 - index) for index in range(count)]
    if mode == "control":
        return [strength * float(scale) for scale in torch.logspace(-1, 0, count)]
    return [strength] * count


def _on_model(tensor: torch.Tensor, model: ControlNet) -> torch.Tensor:
    """`tensor` on the model's device, in its dtype."""
    weight = next(model.parameters())
    return tensor.to(device=weight.device, dtype=weight.dtype)


class ControlApplier:
    """`apply(x, t, cond) -> cond` with the acting units' summed residuals in cond.control, for a run over
    `sigmas` whose model calls carry `batch` conditional rows (then as many unconditional ones under CFG)."""

    def __init__(
        self, hints: tuple[ControlHint, ...], sigmas: torch.Tensor, sampling: ModelSampling, batch: int
    ):
        self.hints = tuple(replace(hint, hint=_on_model(hint.hint, hint.model)) for hint in hints)
        self.levels = [float(level) for level in sigmas]
        self.steps = len(self.levels) - 1
        self.sampling = sampling
        self.batch = batch

    def step_of(self, t: torch.Tensor) -> int:
        """The sampling step a model call at timestep t belongs to."""
        sigma = float(self.sampling.t_to_sigma(t.reshape(-1)[:1].double().cpu()))
        return step_at(self.levels, sigma)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> Conditioning:
        step = self.step_of(t)
        total = None
        for hint in self.hints:
            if hint.unit.strength == 0 or not acts_at(hint.unit, step, self.steps):
                continue
            residuals = self.residuals(hint, x, t, cond)
            total = residuals if total is None else total + residuals
        if total is None:
            return cond
        return replace(cond, control=total if cond.control is None else cond.control + total)

    def residuals(
        self, hint: ControlHint, x: torch.Tensor, t: torch.Tensor, cond: Conditioning
    ) -> ControlResiduals:
        """One unit's scaled residuals for every row of x; in "control" mode the unconditional rows get 0."""
        model, unit = hint.model, hint.unit
        weight = next(model.parameters())
        rows = x.shape[0]
        conditional_only = unit.mode == "control" and rows == 2 * self.batch
        used = self.batch if conditional_only else rows
        inputs = Conditioning(cond.context[:used], None if cond.y is None else cond.y[:used])
        inputs = inputs.to(device=weight.device, dtype=weight.dtype)
        timesteps = t.reshape(-1).expand(rows)[:used].to(weight.device)
        output = model(x[:used].to(device=weight.device, dtype=weight.dtype), hint.hint, timesteps, inputs)
        output = output.map(lambda tensor: tensor.to(x.device))
        scales = residual_scales(unit.mode, unit.strength, len(output.skips) + 1)
        scaled = ControlResiduals(
            tuple(skip * scale for skip, scale in zip(output.skips, scales, strict=False)),
            output.middle * scales[-1],
        )
        if conditional_only:
            scaled = scaled.map(lambda tensor: torch.cat([tensor, torch.zeros_like(tensor)]))
        return scaled
