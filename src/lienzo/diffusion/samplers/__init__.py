"""The sampler registry: ComfyUI sampler ids -> SamplerInfo (function, noise use, A1111 name, options)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

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

RUN_ARGUMENTS = ("noise", "callback")
"""Keyword arguments every call supplies itself; the rest of a sampler's keywords are its options."""


@dataclass(frozen=True)
class SamplerInfo:
    """One sampler: `fn(denoise, x, sigmas, *, [noise], callback, **options) -> x`, whether it draws fresh
    noise at every step (`stochastic`), its A1111 display name and its tunable options with defaults."""

    fn: Callable
    stochastic: bool
    a1111_name: str | None = None
    options: dict[str, object] = field(init=False)

    def __post_init__(self) -> None:
        parameters = inspect.signature(self.fn).parameters.values()
        options = {
            p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in RUN_ARGUMENTS
        }
        object.__setattr__(self, "options", options)

    @property
    def takes_noise(self) -> bool:
        """Whether the sampler can draw noise (stochastic ones always do, Euler only with churn)."""
        return "noise" in inspect.signature(self.fn).parameters


SAMPLERS: dict[str, SamplerInfo] = {
    "euler": SamplerInfo(sample_euler, False, "Euler"),
    "euler_ancestral": SamplerInfo(sample_euler_ancestral, True, "Euler a"),
    "heun": SamplerInfo(sample_heun, False, "Heun"),
    "ddim": SamplerInfo(sample_ddim, False, "DDIM"),
    "ddpm": SamplerInfo(sample_ddpm, True, "DDPM"),
    "lcm": SamplerInfo(sample_lcm, True, "LCM"),
    "dpm_2": SamplerInfo(sample_dpm_2, False, "DPM2"),
    "dpm_2_ancestral": SamplerInfo(sample_dpm_2_ancestral, True, "DPM2 a"),
    "lms": SamplerInfo(sample_lms, False, "LMS"),
    "dpmpp_2s_ancestral": SamplerInfo(sample_dpmpp_2s_ancestral, True, "DPM++ 2S a"),
    "dpmpp_sde": SamplerInfo(sample_dpmpp_sde, True, "DPM++ SDE"),
    "dpmpp_2m": SamplerInfo(sample_dpmpp_2m, False, "DPM++ 2M"),
    "dpmpp_2m_sde": SamplerInfo(sample_dpmpp_2m_sde, True, "DPM++ 2M SDE"),
    "dpmpp_3m_sde": SamplerInfo(sample_dpmpp_3m_sde, True, "DPM++ 3M SDE"),
    "ipndm": SamplerInfo(sample_ipndm, False, "PLMS"),
    "uni_pc": SamplerInfo(sample_uni_pc, False, "UniPC"),
    "uni_pc_bh2": SamplerInfo(sample_uni_pc_bh2, False),
}
"""Sampler id (ComfyUI's) -> its SamplerInfo, in ComfyUI's order."""

A1111_SCHEDULER_SUFFIXES: dict[str, str] = {" Karras": "karras", " Exponential": "exponential"}
"""Display-name suffixes that imply a sigma schedule."""


def resolve_sampler(name: str) -> tuple[str, str | None]:
    """(sampler id, implied scheduler or None) for an id or an A1111 display name like "DPM++ 2M Karras"."""
    if name in SAMPLERS:
        return name, None
    scheduler = None
    base = name.strip()
    for suffix, schedule in A1111_SCHEDULER_SUFFIXES.items():
        if base.endswith(suffix):
            base, scheduler = base[: -len(suffix)], schedule
            break
    by_lower = {info.a1111_name.lower(): id_ for id_, info in SAMPLERS.items() if info.a1111_name}
    sampler = base if base in SAMPLERS else by_lower.get(base.lower())
    if sampler is None:
        aliases = [info.a1111_name for info in SAMPLERS.values() if info.a1111_name]
        raise InvalidArgumentError(
            f"unknown sampler {name!r}; use one of: {', '.join([*SAMPLERS, *aliases])} "
            "(A1111 names may end in ' Karras' or ' Exponential')"
        )
    return sampler, scheduler


def sampler_info(name: str) -> SamplerInfo:
    """The SamplerInfo of a sampler id or A1111 display name."""
    return SAMPLERS[resolve_sampler(name)[0]]


def check_sampler_options(name: str, options: dict[str, object]) -> None:
    """Raise InvalidArgumentError for an option the sampler does not take, naming the ones it does."""
    known = sampler_info(name).options
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = ", ".join(f"{key}={value}" for key, value in known.items()) or "no options"
        raise InvalidArgumentError(f"sampler {name} has no option {', '.join(unknown)}; it takes {takes}")


def get_sampler(name: str) -> Callable:
    """The sampler function of a sampler id or A1111 display name."""
    return sampler_info(name).fn
