"""The sampler registry: ComfyUI sampler ids -> pure functions, plus A1111 display-name aliases."""

from __future__ import annotations

from collections.abc import Callable

from lienzo.diffusion.samplers.first_order import (
    sample_ddim,
    sample_ddpm,
    sample_euler,
    sample_euler_ancestral,
    sample_lcm,
)
from lienzo.diffusion.samplers.multistep import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpmpp_2m,
    sample_ipndm,
    sample_lms,
)
from lienzo.diffusion.samplers.sde import (
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from lienzo.diffusion.samplers.second_order import sample_heun
from lienzo.diffusion.samplers.unipc import sample_uni_pc, sample_uni_pc_bh2
from lienzo.errors import InvalidArgumentError

SAMPLER_FUNCTIONS: dict[str, Callable] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "ipndm": sample_ipndm,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}
"""Sampler id -> `sample_<id>(denoise, x, sigmas, *, generator=None, callback=None, **options) -> x`."""

A1111_NAMES: dict[str, str] = {
    "Euler": "euler",
    "Euler a": "euler_ancestral",
    "Heun": "heun",
    "DDIM": "ddim",
    "DDPM": "ddpm",
    "LCM": "lcm",
    "LMS": "lms",
    "DPM2": "dpm_2",
    "DPM2 a": "dpm_2_ancestral",
    "DPM++ 2S a": "dpmpp_2s_ancestral",
    "DPM++ SDE": "dpmpp_sde",
    "DPM++ 2M": "dpmpp_2m",
    "DPM++ 2M SDE": "dpmpp_2m_sde",
    "DPM++ 3M SDE": "dpmpp_3m_sde",
    "UniPC": "uni_pc",
    "PLMS": "ipndm",
}
"""A1111 display names (without a scheduler suffix) -> sampler ids."""

A1111_SCHEDULER_SUFFIXES: dict[str, str] = {" Karras": "karras", " Exponential": "exponential"}
"""Display-name suffixes that imply a sigma schedule."""


def sampler_ids() -> tuple[str, ...]:
    """The registered sampler ids, in registration order."""
    return tuple(SAMPLER_FUNCTIONS)


def resolve_sampler(name: str) -> tuple[str, str | None]:
    """(sampler id, implied scheduler or None) for an id or an A1111 display name like "DPM++ 2M Karras"."""
    if name in SAMPLER_FUNCTIONS:
        return name, None
    scheduler = None
    base = name.strip()
    for suffix, schedule in A1111_SCHEDULER_SUFFIXES.items():
        if base.endswith(suffix):
            base, scheduler = base[: -len(suffix)], schedule
            break
    by_lower = {display.lower(): sampler for display, sampler in A1111_NAMES.items()}
    sampler = base if base in SAMPLER_FUNCTIONS else by_lower.get(base.lower())
    if sampler not in SAMPLER_FUNCTIONS:
        aliases = [display for display, sampler_id in A1111_NAMES.items() if sampler_id in SAMPLER_FUNCTIONS]
        raise InvalidArgumentError(
            f"unknown sampler {name!r}; use one of: {', '.join([*SAMPLER_FUNCTIONS, *aliases])} "
            "(A1111 names may end in ' Karras' or ' Exponential')"
        )
    return sampler, scheduler


def get_sampler(name: str) -> Callable:
    """The sampler function for a sampler id or A1111 display name."""
    return SAMPLER_FUNCTIONS[resolve_sampler(name)[0]]
