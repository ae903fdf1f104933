"""ComfyUI's KSampler on lienzo's steps: a latent, seeded noise, conditioning lists, a slice of the steps.

A graph's CONDITIONING is a list of `PromptCondition`s (text encodings with an optional area, strength
and part of the schedule); they become `RegionalConditioning`s at the latent's size and are averaged
by `regional_denoiser`. The noise follows lienzo's rule (item i from seed + i), the sigmas ComfyUI's
(`denoise` runs the tail of a longer schedule; start and end steps cut the schedule), and a latent
noise mask blends in the original latent outside the mask at every step. The MODEL's fast modes
(lienzo.pipelines.fast_modes) act on the run as on `sample_latents`' (lienzo.pipelines.fast_sampling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lienzo.devices import cpu_threads_for
from lienzo.diffusion import (
    Conditioning,
    Denoiser,
    SeededNoise,
    get_sigmas,
    noise_latent,
    parameterization_for,
    partial_denoise_sigmas,
)
from lienzo.diffusion.regions import (
    RegionalConditioning,
    batched_pair,
    percent_to_sigma,
    regional_denoiser,
)
from lienzo.errors import InvalidArgumentError
from lienzo.models.feature_reuse import FeatureReuse
from lienzo.models.specs import FamilySpec
from lienzo.models.unet import UNetModel, sdxl_vector_conditioning
from lienzo.pipelines.control_apply import ControlApplier, ControlHint
from lienzo.pipelines.control_units import ControlUnit
from lienzo.pipelines.controlnets import fit_control_image, hint_tensor
from lienzo.pipelines.fast_modes import FastModes, check_fast_modes
from lienzo.pipelines.fast_sampling import (
    feature_reuse,
    guidance_interval,
    refreshing_denoiser,
    token_merging,
)
from lienzo.pipelines.masking import latent_mask
from lienzo.pipelines.options import AESTHETIC_SCORES, GenerationOptions
from lienzo.pipelines.steps import (
    StepCallback,
    inpaint_blend_denoiser,
    model_sampling,
    network,
    run_sampler,
    vector_values,
)

SEED_MODULUS = 2**64
"""Seeds wrap around at 2^64 (ComfyUI's seed range), so seed + i stays a valid generator seed."""
EXACT = FastModes()
"""No fast mode (the exact path)."""


@dataclass(frozen=True)
class PromptCondition:
    """One entry of a graph's CONDITIONING: a text encoding (1, L, C) and its pooled vector (SDXL), the
    weight and area (height, width, top, left in pixels) it applies with, and the fraction of the
    schedule (start, end) during which it applies; for inpaint models, the masked image's latent (the VAE
    posterior mean, unscaled) and the (B, 1, H, W) pixel mask they take as extra input channels; the
    ControlNet units (loaded) whose residuals its model calls add."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None
    strength: float = 1.0
    area: tuple[int, int, int, int] | None = None
    percent_range: tuple[float, float] = (0.0, 1.0)
    concat_latent: torch.Tensor | None = None
    concat_mask: torch.Tensor | None = None
    control: tuple[ControlUnit, ...] = ()


DenoiserFor = Callable[[tuple[ControlUnit, ...]], Denoiser | None]
"""`denoiser_for(units)`: the Denoiser whose network adds these ControlNet units' residuals (None: none)."""


def control_denoisers(
    unet: UNetModel,
    spec: FamilySpec,
    width: int,
    height: int,
    sigmas: torch.Tensor,
    batch: int,
    reuse: FeatureReuse | None = None,
) -> DenoiserFor:
    """One Denoiser per distinct set of units, each unit's control image fitted to width x height (so a
    positive and negative that share their units share one Denoiser and one batched call); `reuse` is
    the run's DeepCache state."""
    sampling = model_sampling(spec.schedule)
    made: dict[tuple[int, ...], Denoiser] = {}

    def denoiser_for(units: tuple[ControlUnit, ...]) -> Denoiser | None:
        if not units:
            return None
        key = tuple(id(unit) for unit in units)
        if key not in made:
            hints = tuple(
                ControlHint(
                    unit,
                    unit.model.model,
                    hint_tensor(fit_control_image(unit.image, width, height, unit.resize_mode)),
                )
                for unit in units
            )
            applier = ControlApplier(hints, sigmas, sampling, batch)
            made[key] = Denoiser(
                network(unet, applier, reuse), parameterization_for(spec.prediction), sampling
            )
        return made[key]

    return denoiser_for


def extra_channels(spec: FamilySpec, entry: PromptCondition) -> torch.Tensor | None:
    """The extra UNet input of an inpaint model (latent-size mask, masked-image latent); None for others."""
    if spec.concat_channels == 0:
        return None
    if spec.variant != "inpaint" or entry.concat_latent is None:
        raise InvalidArgumentError(
            f"a {spec.name} model takes extra input channels; for an inpaint model, pass the conditionings "
            "through InpaintModelConditioning (other variants are not available in graphs)"
        )
    latent = entry.concat_latent * spec.vae.scaling_factor
    return torch.cat([latent_mask(entry.concat_mask, tuple(latent.shape[-2:])), latent], dim=1)


def regional_conditions(
    spec: FamilySpec,
    entries: list[PromptCondition],
    width: int,
    height: int,
    device,
    denoiser_for: DenoiserFor,
    negative: bool = False,
) -> list[RegionalConditioning]:
    """The denoiser-level entries of a conditioning list for a latent of width x height pixels."""
    sampling = model_sampling(spec.schedule)
    factor = spec.vae.downscale_factor
    regional = []
    for entry in entries:
        y = None
        if spec.vector_conditioning is not None:
            score = AESTHETIC_SCORES[1 if negative else 0]
            values = vector_values(spec.vector_conditioning, width, height, score)
            y = sdxl_vector_conditioning(entry.pooled, values, spec.unet.addition_time_embed_dim)
        area = None if entry.area is None else tuple(value // factor for value in entry.area)
        start, end = entry.percent_range
        sigma_range = (percent_to_sigma(sampling, end), percent_to_sigma(sampling, start))
        if entry.control and area is not None:
            raise InvalidArgumentError(
                "ControlNet units cannot guide a conditioning with an area; drop one of them"
            )
        cond = Conditioning(entry.context, y, extra_channels(spec, entry)).to(device)
        denoiser = denoiser_for(entry.control)
        regional.append(RegionalConditioning(cond, entry.strength, area, sigma_range, denoiser))
    return regional


def ksampler_sigmas(
    spec: FamilySpec,
    scheduler: str,
    steps: int,
    *,
    denoise: float = 1.0,
    start_step: int = 0,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> torch.Tensor:
    """ComfyUI's sigmas: `steps` of the scheduler (with denoise < 1, the tail of int(steps / denoise)
    steps), cut at last_step (ending at 0 with force_full_denoise) and started at start_step."""
    sampling = model_sampling(spec.schedule)
    if denoise < 1:
        sigmas = partial_denoise_sigmas(scheduler, steps, sampling, denoise)
    else:
        sigmas = get_sigmas(scheduler, steps, sampling)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    return sigmas[start_step:]


def ksample(
    unet: UNetModel,
    spec: FamilySpec,
    positive: list[PromptCondition],
    negative: list[PromptCondition],
    latent: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    seed: int,
    cfg: float,
    sampler: str,
    add_noise: bool = True,
    noise_mask: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    progress: bool = True,
    fast: FastModes = EXACT,
) -> torch.Tensor:
    """The sampled latent (scaled, float32) from `latent` + noise at sigmas[0] down to sigmas[-1]; the
    CFG cutoff counts the steps of this run's `sigmas`, DeepCache needs one full-size conditioning per
    side (one batched call per step). Small CPU work samples on one thread, as in `sample_latents`."""
    check_fast_modes(fast)
    if len(sigmas) < 2:
        return latent
    batch = latent.shape[0]
    height, width = (size * spec.vae.downscale_factor for size in latent.shape[-2:])
    options = GenerationOptions(
        prompt="", negative_prompt="", width=width, height=height, steps=len(sigmas) - 1, cfg=cfg,
        sampler=sampler, scheduler="normal", seed=seed % SEED_MODULUS, batch_size=batch,
    )  # fmt: skip
    generators = [torch.Generator("cpu").manual_seed((seed + i) % SEED_MODULUS) for i in range(batch)]
    device = next(unet.parameters()).device
    shape = tuple(latent.shape[1:])
    noise = torch.stack([torch.randn(shape, generator=generator) for generator in generators]).to(device)
    if not add_noise:
        noise = torch.zeros_like(noise)
    start = latent.to(device).float()
    reuse = feature_reuse(fast)
    sampling = model_sampling(spec.schedule)
    denoiser = Denoiser(network(unet, reuse=reuse), parameterization_for(spec.prediction), sampling)
    denoiser_for = control_denoisers(unet, spec, width, height, sigmas, batch, reuse)
    positive_entries = regional_conditions(spec, positive, width, height, device, denoiser_for)
    negative_entries = regional_conditions(spec, negative, width, height, device, denoiser_for, negative=True)
    interval = guidance_interval(fast, sigmas)
    denoise = regional_denoiser(denoiser, positive_entries, negative_entries, cfg, sigma_interval=interval)
    if reuse is not None:
        if not batched_pair(positive_entries, negative_entries, cfg):
            raise InvalidArgumentError(
                "DeepCache reuses one UNet call's features per step, so it needs one full-size "
                "conditioning per side (no areas, timestep ranges or combined conditionings) and the "
                "same ControlNets on both; set the DeepCache interval to 1 for this workflow"
            )
        denoise = refreshing_denoiser(denoise, reuse, fast.deepcache, sigmas)
    if noise_mask is not None:
        mask = F.interpolate(noise_mask.to(device).float(), size=tuple(latent.shape[-2:]), mode="bilinear")
        denoise = inpaint_blend_denoiser(denoise, start, mask, noise)
    x = noise_latent(start, noise, float(sigmas[0]))
    sampler_noise = SeededNoise(generators)
    threads = cpu_threads_for(device, shape[1] * shape[2], unet.config.model_channels)
    with threads, token_merging(unet, fast.tome):
        return run_sampler(
            denoise, x, sigmas, options, noise=sampler_noise, callback=callback, progress=progress
        )
