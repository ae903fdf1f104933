"""What the network predicts (eps, v or x0): preconditioning scalings and the matching training loss.

Scalings follow Karras et al. 2022 (EDM), Table 1, for the variance-preserving SD models with the
latent written as x = x0 + sigma * n (sigma_data = 1):
D(x, sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma)).
c_noise is the model's timestep for sigma, given by ModelSampling.sigma_to_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lienzo.diffusion.samplers.common import append_dims
from lienzo.errors import InvalidArgumentError


@dataclass(frozen=True)
class Scalings:
    """The preconditioning factors c_skip, c_out and c_in at some sigmas, each broadcastable to x."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor


@dataclass(frozen=True)
class Parameterization:
    """Base class: maps a network output to x0 and gives the training target and loss."""

    sigma_data: float = 1.0

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        """Input scaling 1 / sqrt(sigma^2 + sigma_data^2) (VP: x_t = sqrt(abar) x)."""
        return (sigma**2 + self.sigma_data**2) ** -0.5

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        """c_skip, c_out, c_in at `sigma`."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """What the network should output for x = x0 + sigma * noise."""
        raise NotImplementedError

    def denoised(self, x: torch.Tensor, model_output: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x0 estimate c_skip * x + c_out * model_output (sigma of shape (B,) or scalar)."""
        scale = self.scalings(append_dims(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x.ndim))
        return scale.c_skip * x + scale.c_out * model_output

    def output_for(self, x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The network output whose x0 estimate at (x, sigma) is x0: the inverse of `denoised`."""
        scale = self.scalings(append_dims(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x.ndim))
        return (x0 - scale.c_skip * x) / scale.c_out

    def x0_error_factor(self, snr: torch.Tensor) -> torch.Tensor:
        """How much this target's squared error weighs an error in x0, at signal-to-noise ratio `snr`."""
        raise NotImplementedError

    def min_snr_weights(self, sigma: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma loss weights (Hang et al. 2023): x0 error counts min(SNR, gamma), SNR = 1/sigma^2."""
        snr = sigma.float() ** -2
        return torch.clamp(snr, max=gamma) / self.x0_error_factor(snr)

    def loss(
        self,
        model_output: torch.Tensor,
        x0: torch.Tensor,
        noise: torch.Tensor,
        sigma: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean squared error between the network output and its target (Ho et al. 2020, eq. 14 style),
        each sample's error scaled by `weights` (shape (B,)) when given."""
        sigma = append_dims(torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device), x0.ndim)
        error = (model_output.float() - self.target(x0, noise, sigma).float()) ** 2
        if weights is None:
            return torch.mean(error)
        return torch.mean(error.flatten(1).mean(1) * weights.to(error.device, error.dtype))


@dataclass(frozen=True)
class EpsPrediction(Parameterization):
    """The network predicts the noise: x0 = x - sigma * eps (Ho et al. 2020)."""

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        """c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + sigma_data^2)."""
        return Scalings(torch.ones_like(sigma), -sigma, self.c_in(sigma))

    def target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The noise itself."""
        return noise

    def x0_error_factor(self, snr: torch.Tensor) -> torch.Tensor:
        """|eps error|^2 = SNR * |x0 error|^2."""
        return snr


@dataclass(frozen=True)
class VPrediction(Parameterization):
    """The network predicts velocity v = alpha * eps - sigma_vp * x0 (Salimans & Ho 2022, eq. 11)."""

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        """c_skip = sd^2 / (sigma^2 + sd^2), c_out = -sigma * sd / sqrt(sigma^2 + sd^2), c_in as eps."""
        total = sigma**2 + self.sigma_data**2
        return Scalings(self.sigma_data**2 / total, -sigma * self.sigma_data * total**-0.5, self.c_in(sigma))

    def target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """v = (sd^2 * noise - sigma * x0) / (sd * sqrt(sigma^2 + sd^2))."""
        sd = self.sigma_data
        return (noise * sd**2 - sigma * x0) / (sd * (sigma**2 + sd**2) ** 0.5)

    def x0_error_factor(self, snr: torch.Tensor) -> torch.Tensor:
        """|v error|^2 = (SNR + 1) * |x0 error|^2."""
        return snr + 1


@dataclass(frozen=True)
class X0Prediction(Parameterization):
    """The network predicts the clean sample directly."""

    def scalings(self, sigma: torch.Tensor) -> Scalings:
        """c_skip = 0, c_out = 1, c_in as eps."""
        return Scalings(torch.zeros_like(sigma), torch.ones_like(sigma), self.c_in(sigma))

    def target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The clean sample."""
        return x0

    def x0_error_factor(self, snr: torch.Tensor) -> torch.Tensor:
        """The x0 error itself."""
        return torch.ones_like(snr)


PARAMETERIZATIONS: dict[str, type[Parameterization]] = {
    "eps": EpsPrediction,
    "epsilon": EpsPrediction,
    "v": VPrediction,
    "v_prediction": VPrediction,
    "x0": X0Prediction,
    "sample": X0Prediction,
}


def parameterization_for(name: str, sigma_data: float = 1.0) -> Parameterization:
    """The parameterization object for "eps", "v" or "x0" (diffusers' "epsilon", "v_prediction", "sample")."""
    if name not in PARAMETERIZATIONS:
        raise InvalidArgumentError(f"unknown prediction type {name!r}; use one of: eps, v, x0")
    return PARAMETERIZATIONS[name](sigma_data=sigma_data)
