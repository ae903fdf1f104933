"""The residuals ControlNet units add to each model call (Zhang et al. 2023): which units act at the
call's sampling step, each unit's scales by control mode, their sum in `Conditioning.control`. A unit whose
model is a T2I-Adapter (Mou et al. 2023) adds its features, computed once per control image, to the UNet
encoder (`ControlResiduals.encoder`) instead."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from lienzo.diffusion import Conditioning, ControlResiduals, ModelSampling
from lienzo.models.controlnet import ControlNet
from lienzo.models.t2i_adapter import T2IAdapter
from lienzo.pipelines.control_units import ADAPTER_SOFT_SCALES, PROMPT_MODE_DECAY, ControlUnit, acts_at
from lienzo.pipelines.steps import step_at


@dataclass(frozen=True, eq=False)
class ControlHint:
    """One unit at one pass size: its settings, its network and its control image tensor."""

    unit: ControlUnit
    model: ControlNet | T2IAdapter
    hint: torch.Tensor


def residual_scales(mode: str, strength: float, count: int) -> list[float]:
    """Scale of each of `count` residuals (skips, then the middle) in a control mode."""
    if mode == "prompt":
        return [strength * PROMPT_MODE_DECAY ** (count - 1 - index) for index in range(count)]
    if mode == "control":
        return [strength * float(scale) for scale in torch.logspace(-1, 0, count)]
    return [strength] * count


def adapter_scales(mode: str, strength: float, count: int) -> list[float]:
    """Scale of each of a T2I-Adapter's `count` features in a control mode: A1111's soft injection
    (0.25, 0.62, 0.825, 1.0, aligned at the last feature) in "prompt" and "control", else `strength`."""
    if mode == "balanced":
        return [strength] * count
    soft = ADAPTER_SOFT_SCALES
    return [strength * soft[max(0, index + len(soft) - count)] for index in range(count)]


def adapter_input(hint: torch.Tensor, adapter: T2IAdapter) -> torch.Tensor:
    """The control image as the adapter takes it: grey (the channel mean) for one-channel adapters, and
    resized (nearest, as ComfyUI) up to multiples of the pixel-unshuffle factor when it is not one."""
    if adapter.config.in_channels == 1:
        hint = hint.mean(dim=1, keepdim=True)
    factor = adapter.config.downscale_factor
    height, width = (math.ceil(size / factor) * factor for size in hint.shape[-2:])
    if (height, width) != tuple(hint.shape[-2:]):
        hint = F.interpolate(hint, size=(height, width), mode="nearest-exact")
    return hint


def _on_model(tensor: torch.Tensor, model: ControlNet | T2IAdapter) -> torch.Tensor:
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
        self.features: dict[int, ControlResiduals] = {}

    def step_of(self, t: torch.Tensor) -> int:
        """The sampling step a model call at timestep t belongs to."""
        sigma = float(self.sampling.t_to_sigma(t.reshape(-1)[:1].double().cpu()))
        return step_at(self.levels, sigma)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> Conditioning:
        step = self.step_of(t)
        total = None
        for index, hint in enumerate(self.hints):
            if hint.unit.strength == 0 or not acts_at(hint.unit, step, self.steps):
                continue
            if isinstance(hint.model, T2IAdapter):
                residuals = self.adapter_residuals(index, x)
            else:
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

    def adapter_residuals(self, index: int, x: torch.Tensor) -> ControlResiduals:
        """A T2I-Adapter unit's scaled features for every row of x (the same control image for each row,
        as diffusers repeats them); in "control" mode the unconditional rows get 0."""
        hint = self.hints[index]
        if index not in self.features:
            features = hint.model.residuals(adapter_input(hint.hint, hint.model))
            self.features[index] = features.map(lambda tensor: tensor.to(x.device))
        features, unit, rows = self.features[index], hint.unit, x.shape[0]
        count = len(features.encoder) + (features.middle is not None)
        scales = adapter_scales(unit.mode, unit.strength, count)
        middle = None if features.middle is None else features.middle * scales[-1]
        scaled = ControlResiduals(
            middle=middle,
            encoder=tuple(level * scale for level, scale in zip(features.encoder, scales, strict=False)),
        )
        if unit.mode == "control" and rows == 2 * self.batch:
            return scaled.map(
                lambda tensor: torch.cat([tensor, torch.zeros_like(tensor)]).repeat_interleave(self.batch, 0)
            )
        return scaled.map(lambda tensor: tensor.expand(rows, -1, -1, -1))
