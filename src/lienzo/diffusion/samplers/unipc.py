"""UniPC: unified predictor-corrector multistep sampler, data prediction (Zhao et al. 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lienzo.diffusion.samplers.common import Callback, Denoise, denoise_at, report, sigma_list
from lienzo.errors import InvalidArgumentError

UNIPC_VARIANTS = ("bh1", "bh2")


@dataclass(frozen=True)
class UniPCStep:
    """Coefficients of one UniPC step from the newest history point over h = lambda_next - lambda."""

    decay: float
    base_weight: float
    scale: float
    predictor_rhos: tuple[float, ...]
    corrector_rhos: tuple[float, ...]


def unipc_step(h: float, ratios: list[float], variant: str) -> UniPCStep:
    """UniPC coefficients for order len(ratios) + 1 (Zhao et al. 2023, Alg. 2 and 3, eq. 7; B(h) of sec. 3.3).

    `ratios` are r_k = (lambda_k - lambda_newest) / h of the older history points, newest first.
    """
    order = len(ratios) + 1
    hh = -h
    h_phi_1 = math.expm1(hh)
    scale = hh if variant == "bh1" else h_phi_1
    nodes = torch.tensor([*ratios, 1.0], dtype=torch.float64)
    powers = torch.stack([nodes**k for k in range(order)])
    phi, factorial, targets = h_phi_1 / hh - 1, 1.0, []
    for k in range(1, order + 1):
        targets.append(phi * factorial / scale)
        factorial *= k + 1
        phi = phi / hh - 1 / factorial
    targets_t = torch.tensor(targets, dtype=torch.float64)
    if order == 1:
        predictor: tuple[float, ...] = ()
    elif order == 2:
        predictor = (0.5,)
    else:
        predictor = tuple(torch.linalg.solve(powers[:-1, :-1], targets_t[:-1]).tolist())
    corrector = (0.5,) if order == 1 else tuple(torch.linalg.solve(powers, targets_t).tolist())
    return UniPCStep(math.exp(hh), h_phi_1, scale, predictor, corrector)


def _differences(history: list[tuple[float, torch.Tensor]], order: int, h: float):
    """Ratios r_k and scaled differences (D_k - D_newest) / r_k of the order - 1 older history points."""
    newest_lambda, newest = history[-1]
    ratios, differences = [], []
    for older_lambda, older in reversed(history[-order:-1]):
        ratio = (older_lambda - newest_lambda) / h
        ratios.append(ratio)
        differences.append((older - newest) / ratio)
    return ratios, differences


@torch.no_grad()
def sample_uni_pc(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    order: int = 3,
    variant: str = "bh1",
    lower_order_final: bool = True,
) -> torch.Tensor:
    """UniPC-p with UniC correction reusing each new model output (Zhao et al. 2023, Alg. 2 and 3).

    The predictor reaches the next level, the model is evaluated there, and the corrector refines that point
    with the new output; the last step is predictor-only and a step to sigma 0 returns the clean estimate.
    """
    if variant not in UNIPC_VARIANTS:
        raise InvalidArgumentError(f"UniPC variant must be one of {UNIPC_VARIANTS}, got {variant!r}")
    if order < 1:
        raise InvalidArgumentError(f"UniPC order must be at least 1, got {order}; the usual choice is 3")
    levels = sigma_list(sigmas)
    steps = len(levels) - 1
    history: list[tuple[float, torch.Tensor]] = []
    pending: tuple[torch.Tensor, UniPCStep, list[torch.Tensor]] | None = None
    for i in range(steps):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = denoise_at(denoise, x, sigma)
        if pending is not None:
            x_start, coefficients, differences = pending
            newest = history[-1][1]
            older_rhos = coefficients.corrector_rhos[:-1]
            correction = sum(rho * d for rho, d in zip(older_rhos, differences, strict=True))
            correction = correction + coefficients.corrector_rhos[-1] * (denoised - newest)
            x = coefficients.decay * x_start - coefficients.base_weight * newest
            x = x - coefficients.scale * correction
        history = [*history, (-math.log(sigma), denoised)][-order:]
        report(callback, i, x, levels[i], levels[i + 1], denoised)
        if sigma_next == 0:
            x, pending = denoised, None
            continue
        step_order = min(order, len(history), steps - i if lower_order_final else order)
        h = math.log(sigma / sigma_next)
        ratios, differences = _differences(history, step_order, h)
        coefficients = unipc_step(h, ratios, variant)
        prediction = sum(rho * d for rho, d in zip(coefficients.predictor_rhos, differences, strict=True))
        pending = (x, coefficients, differences)
        x = coefficients.decay * x - coefficients.base_weight * denoised - coefficients.scale * prediction
    return x


@torch.no_grad()
def sample_uni_pc_bh2(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    callback: Callback | None = None,
    order: int = 3,
    lower_order_final: bool = True,
) -> torch.Tensor:
    """UniPC with B(h) = e^h - 1, the bh2 variant (Zhao et al. 2023, sec. 3.3)."""
    return sample_uni_pc(
        denoise, x, sigmas, callback=callback, order=order, variant="bh2", lower_order_final=lower_order_final
    )
