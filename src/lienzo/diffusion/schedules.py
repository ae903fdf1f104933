"""Noise schedules of discrete diffusion models and their sigma tables (ModelSampling)."""

from __future__ import annotations

import math

import torch

from lienzo.errors import InvalidArgumentError
from lienzo.models.specs import BETA_SCHEDULES, NoiseScheduleConfig

ZERO_SNR_ALPHA_CUMPROD_FLOOR = 2.0**-24
"""alphas_cumprod used in place of an exact 0 (zero terminal SNR) when building sigmas: sigma_max = 4096."""


def make_betas(schedule: str, timesteps: int, linear_start: float, linear_end: float) -> torch.Tensor:
    """Float64 betas: `linear` (Ho et al. 2020), SD's `scaled_linear`, `cosine` (Nichol & Dhariwal 2021)."""
    if schedule == "linear":
        return torch.linspace(linear_start, linear_end, timesteps, dtype=torch.float64)
    if schedule == "scaled_linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
    if schedule == "cosine":
        offset = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        alpha_bar = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise InvalidArgumentError(f"unknown beta schedule {schedule!r}; use one of: {', '.join(BETA_SCHEDULES)}")


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alphas_cumprod) so the last step has zero SNR (Lin et al. 2024, Algorithm 1)."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    return ((root - last) * first / (first - last)) ** 2


def alphas_cumprod_for(config: NoiseScheduleConfig) -> torch.Tensor:
    """Float64 cumulative products of alphas = 1 - betas for a schedule config."""
    betas = make_betas(config.beta_schedule, config.timesteps, config.linear_start, config.linear_end)
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return rescale_zero_terminal_snr(alphas_cumprod) if config.zero_terminal_snr else alphas_cumprod


class ModelSampling:
    """A discrete model's sigma table sigma_t = sqrt((1 - abar_t) / abar_t) and sigma <-> timestep maps.

    Timesteps between table entries interpolate linearly in log(sigma), as k-diffusion does.
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)
        floored = self.alphas_cumprod.clamp(min=ZERO_SNR_ALPHA_CUMPROD_FLOOR)
        self.sigmas = ((1 - floored) / floored).sqrt().float()
        self.log_sigmas = self.sigmas.double().log()

    @classmethod
    def from_config(cls, config: NoiseScheduleConfig | None = None) -> ModelSampling:
        """The sigma table of a schedule config (defaults: SD's scaled_linear 0.00085-0.012, 1000 steps)."""
        return cls(alphas_cumprod_for(config or NoiseScheduleConfig()))

    @property
    def num_timesteps(self) -> int:
        """Number of discrete training timesteps."""
        return len(self.sigmas)

    @property
    def sigma_min(self) -> float:
        """Smallest sigma of the table (timestep 0)."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """Largest sigma of the table (last timestep)."""
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of each sigma, interpolating linearly in log(sigma) between table entries."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float64).clamp(min=1e-30).log()
        table = self.log_sigmas.to(log_sigma.device)
        low = (torch.searchsorted(table, log_sigma, right=True) - 1).clamp(0, len(table) - 2)
        weight = ((log_sigma - table[low]) / (table[low + 1] - table[low])).clamp(0, 1)
        t = low + weight
        return t.to(sigma.dtype) if torch.is_tensor(sigma) and sigma.is_floating_point() else t

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at fractional timesteps, interpolating linearly in log(sigma) between table entries."""
        t64 = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.num_timesteps - 1)
        table = self.log_sigmas.to(t64.device)
        low = t64.floor().long()
        high = t64.ceil().long()
        weight = t64 - low
        sigma = ((1 - weight) * table[low] + weight * table[high]).exp()
        return sigma.to(t.dtype) if torch.is_tensor(t) and t.is_floating_point() else sigma.float()
