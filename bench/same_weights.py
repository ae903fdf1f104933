"""Benchmark helpers: one UNet with seeded random weights in lienzo and in diffusers, interleaved rounds.

diffusers is the parity oracle and a test-only dependency, so it is imported here only when asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

from lienzo.io.keymaps.unet import unet_config_to_diffusers, unet_diffusers_to_ldm
from lienzo.models.unet import UNetConfig, UNetModel

Key = TypeVar("Key", bound=Hashable)


def diffusers_version() -> tuple[str | None, str]:
    """diffusers' version and "", or None and why its UNet2DConditionModel cannot be imported."""
    try:
        import diffusers
        from diffusers import UNet2DConditionModel  # noqa: F401
    except (ImportError, RuntimeError) as error:
        return None, f"{type(error).__name__}: {error}"
    return diffusers.__version__, ""


def same_weight_unets(
    config: UNetConfig, *, device, dtype: torch.dtype, with_diffusers: bool = True, seed: int = 0
) -> tuple[UNetModel, torch.nn.Module | None]:
    """The UNet of `config` in lienzo and in diffusers' UNet2DConditionModel with identical random weights
    (diffusers' seeded initialisation, made on `device`, renamed through lienzo's key map), both in `dtype`,
    channels_last, eval mode; without diffusers, lienzo's own seeded initialisation and None."""
    torch.manual_seed(seed)
    if not with_diffusers:
        with torch.device(device):
            ours = UNetModel(config)
        return ours.to(dtype, memory_format=torch.channels_last).eval().requires_grad_(False), None
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging

    logging.set_verbosity_error()  # its advice on casting with .to() is for pipelines, not a bare UNet
    with torch.device(device):
        reference = UNet2DConditionModel.from_config(unet_config_to_diffusers(config))
    with torch.device("meta"):
        ours = UNetModel(config)
    weights = {name: tensor.clone() for name, tensor in unet_diffusers_to_ldm(reference.state_dict()).items()}
    ours.load_state_dict(weights, strict=True, assign=True)
    networks = (ours, reference)
    return tuple(  # type: ignore[return-value]
        network.to(dtype, memory_format=torch.channels_last).eval().requires_grad_(False)
        for network in networks
    )


def interleaved_rounds(runs: dict[Key, Callable[[], float]], repeats: int) -> dict[Key, list[float]]:
    """Call each measurement `repeats` times, alternating the order every round so that a drift in the
    machine's speed (clocks, other load) reaches every entry alike; returns each entry's results in order."""
    results: dict[Key, list[float]] = {name: [] for name in runs}
    order = list(runs.items())
    for repeat in range(repeats):
        for name, run in order if repeat % 2 == 0 else reversed(order):
            results[name].append(run())
    return results


def wall_seconds(call: Callable[[], object]) -> Callable[[], float]:
    """A measurement for interleaved_rounds: the wall-clock seconds of one `call()`."""

    def measure() -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    return measure
