"""Sigma schedules for sampling (ComfyUI scheduler ids); each returns float32 sigmas ending in 0."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lienzo.diffusion.schedules import ModelSampling
from lienzo.errors import InvalidArgumentError


def _with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """Float32 sigmas with a final 0 appended."""
    return torch.cat([sigmas.to(torch.float32), sigmas.new_zeros(1, dtype=torch.float32)])


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Sigmas evenly spaced in sigma^(1/rho) from sigma_max to sigma_min (Karras et al. 2022, eq. 5) + 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero((high + ramp * (low - high)) ** rho)


def exponential_sigmas(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Sigmas evenly spaced in log(sigma) from sigma_max to sigma_min, then 0."""
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64)
    return _with_zero(log_sigmas.exp())


def normal_sigmas(steps: int, model_sampling: ModelSampling) -> torch.Tensor:
    """Timesteps evenly spaced from the last to the first (both included), mapped to sigmas, then 0."""
    timesteps = torch.linspace(model_sampling.num_timesteps - 1, 0, steps, dtype=torch.float64)
    return _with_zero(model_sampling.t_to_sigma(timesteps))


def sgm_uniform_sigmas(steps: int, model_sampling: ModelSampling) -> torch.Tensor:
    """Timesteps evenly spaced from the last toward 0 with 0 itself left out (as in SGM / SDXL), then 0."""
    timesteps = torch.linspace(model_sampling.num_timesteps - 1, 0, steps + 1, dtype=torch.float64)[:-1]
    return _with_zero(model_sampling.t_to_sigma(timesteps))


def simple_sigmas(steps: int, model_sampling: ModelSampling) -> torch.Tensor:
    """Table sigmas at every (num_timesteps / steps)-th timestep counted down from the last, then 0."""
    stride = model_sampling.num_timesteps / steps
    indices = [model_sampling.num_timesteps - 1 - int(k * stride) for k in range(steps)]
    return _with_zero(model_sampling.sigmas[indices])


def ddim_uniform_sigmas(steps: int, model_sampling: ModelSampling) -> torch.Tensor:
    """Table sigmas at timesteps 1 + k * (num_timesteps // steps) in descending order (DDIM), then 0."""
    stride = max(model_sampling.num_timesteps // steps, 1)
    indices = [min(1 + k * stride, model_sampling.num_timesteps - 1) for k in reversed(range(steps))]
    return _with_zero(model_sampling.sigmas[indices])


def beta_sigmas(
    steps: int, model_sampling: ModelSampling, alpha: float = 0.6, beta: float = 0.6
) -> torch.Tensor:
    """Timesteps at Beta(alpha, beta) quantiles (Lee et al. 2024, "Beta sampling is all you need"), then 0.

    Quantile levels are 1, 1 - 1/steps, ..., 1/steps; repeated rounded timesteps are dropped.
    """
    last = model_sampling.num_timesteps - 1
    timesteps: list[int] = []
    for k in range(steps):
        t = round(beta_quantile(1 - k / steps, alpha, beta) * last)
        if not timesteps or timesteps[-1] != t:
            timesteps.append(t)
    return _with_zero(model_sampling.sigmas[timesteps])


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the Beta(a, b) CDF, by its continued fraction (modified Lentz; Press et al., NR 6.4)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - regularized_incomplete_beta(1 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def beta_quantile(q: float, a: float, b: float) -> float:
    """The inverse Beta(a, b) CDF at level q, by bisection on the regularized incomplete beta function."""
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if regularized_incomplete_beta(mid, a, b) < q:
            low = mid
        else:
            high = mid
    return (low + high) / 2


SCHEDULE_FUNCTIONS: dict[str, Callable[[int, ModelSampling], torch.Tensor]] = {
    "normal": normal_sigmas,
    "karras": lambda steps, ms: karras_sigmas(steps, ms.sigma_min, ms.sigma_max),
    "exponential": lambda steps, ms: exponential_sigmas(steps, ms.sigma_min, ms.sigma_max),
    "simple": simple_sigmas,
    "sgm_uniform": sgm_uniform_sigmas,
    "ddim_uniform": ddim_uniform_sigmas,
    "beta": beta_sigmas,
}
"""Scheduler id -> function (steps, model_sampling) -> float32 sigmas ending in 0."""

SCHEDULERS: tuple[str, ...] = tuple(SCHEDULE_FUNCTIONS)


def get_sigmas(schedule: str, steps: int, model_sampling: ModelSampling) -> torch.Tensor:
    """Float32 sigmas (length steps + 1, last 0) of the named schedule for a model's sigma table."""
    key = schedule.strip().lower()
    if key not in SCHEDULE_FUNCTIONS:
        raise InvalidArgumentError(f"unknown scheduler {schedule!r}; use one of: {', '.join(SCHEDULERS)}")
    if not isinstance(steps, int) or steps < 1:
        raise InvalidArgumentError(f"steps must be a positive whole number, got {steps!r}")
    return SCHEDULE_FUNCTIONS[key](steps, model_sampling)
