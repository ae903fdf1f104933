"""Noise schedule and prediction maps between a FamilySpec and diffusers' scheduler_config.json."""

from __future__ import annotations

from lienzo.errors import UnknownArchitectureError
from lienzo.models.specs import BETA_SCHEDULES, FamilySpec, NoiseScheduleConfig

DIFFUSERS_BETA_SCHEDULES = {
    "scaled_linear": "scaled_linear",
    "linear": "linear",
    "cosine": "squaredcos_cap_v2",
}
"""diffusers' name of each of lienzo's beta schedules (specs.BETA_SCHEDULES)."""
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}
SCHEDULER_SETTINGS = {
    "_class_name": "EulerDiscreteScheduler",
    "trained_betas": None,
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "steps_offset": 1,
}


def schedule_from_diffusers(config: dict, default: NoiseScheduleConfig, source: str) -> NoiseScheduleConfig:
    """The noise schedule a scheduler_config.json dict describes; settings it lacks keep `default`'s."""
    supported = ", ".join(DIFFUSERS_BETA_SCHEDULES[name] for name in BETA_SCHEDULES)
    if config.get("trained_betas") is not None:
        raise UnknownArchitectureError(
            f"{source} lists trained_betas, which lienzo does not support; it runs the named beta "
            f"schedules {supported}: set beta_schedule, beta_start and beta_end instead"
        )
    names = {diffusers: name for name, diffusers in DIFFUSERS_BETA_SCHEDULES.items()}
    beta_schedule = config.get("beta_schedule", DIFFUSERS_BETA_SCHEDULES[default.beta_schedule])
    if beta_schedule not in names:
        raise UnknownArchitectureError(
            f"{source} has beta_schedule {beta_schedule!r}, which lienzo does not support; "
            f"supported: {supported}"
        )
    return NoiseScheduleConfig(
        beta_schedule=names[beta_schedule],
        timesteps=int(config.get("num_train_timesteps", default.timesteps)),
        linear_start=float(config.get("beta_start", default.linear_start)),
        linear_end=float(config.get("beta_end", default.linear_end)),
        zero_terminal_snr=bool(config.get("rescale_betas_zero_snr", default.zero_terminal_snr)),
    )


def scheduler_to_diffusers(spec: FamilySpec) -> dict:
    """A scheduler_config.json dict for diffusers' EulerDiscreteScheduler with the spec's schedule and
    prediction; zero terminal SNR schedules space timesteps "trailing" so sampling starts at pure noise."""
    schedule = spec.schedule
    return {
        **SCHEDULER_SETTINGS,
        "num_train_timesteps": schedule.timesteps,
        "beta_start": schedule.linear_start,
        "beta_end": schedule.linear_end,
        "beta_schedule": DIFFUSERS_BETA_SCHEDULES[schedule.beta_schedule],
        "rescale_betas_zero_snr": schedule.zero_terminal_snr,
        "timestep_spacing": "trailing" if schedule.zero_terminal_snr else "leading",
        "prediction_type": PREDICTION_TYPES[spec.prediction],
    }
