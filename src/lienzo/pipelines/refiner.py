"""The sampling stage shared by every composition, with the SDXL refiner hand-off (Podell et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..diffusion.samplers.common import Denoise
from .options import GenerationOptions
from .steps import (
    PromptTexts,
    StepCallback,
    conditioning_pair,
    encode_texts,
    make_denoiser,
    run_sampler,
    switch_index,
)

DenoiseWrapper = Callable[[Denoise], Denoise]
"""Turns a model's denoiser into another, e.g. one that blends in the original latent (inpainting)."""


@dataclass(frozen=True)
class EncodedPrompts:
    """Text-encoder outputs of one call: the base model's and, with a refiner, the refiner's."""

    base: PromptTexts
    refiner: PromptTexts | None = None


def encode_prompts_once(pipe, options: GenerationOptions) -> EncodedPrompts:
    """Run each model's text encoders once for the call's prompt and negative prompt."""
    refiner = None if options.refiner is None else encode_texts(options.refiner.pipeline, options)
    return EncodedPrompts(base=encode_texts(pipe, options), refiner=refiner)


def _stage_denoiser(pipe, texts: PromptTexts, options: GenerationOptions, scores: tuple[float, float]):
    cond, uncond = conditioning_pair(pipe, texts, options.width, options.height, scores)
    return make_denoiser(pipe, cond, uncond, options)


def denoise_latents(
    pipe,
    options: GenerationOptions,
    prompts: EncodedPrompts,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    batch_start: int = 0,
    wrap_denoise: DenoiseWrapper | None = None,
) -> torch.Tensor:
    """Sample x from sigmas[0] to sigmas[-1]; with options.refiner, the base model runs the first
    `switch_at` of the steps and the refiner (with its aesthetic-score conditioning) the rest."""
    wrap = wrap_denoise or (lambda denoise: denoise)
    refiner = options.refiner
    steps = len(sigmas) - 1
    handoff = steps if refiner is None else switch_index(steps, refiner.switch_at)
    run = {
        "generator": generator,
        "callback": callback,
        "batch_start": batch_start,
        "progress": pipe.progress,
    }
    if handoff > 0:
        base = _stage_denoiser(pipe, prompts.base, options, (6.0, 2.5))
        x = run_sampler(wrap(base), x, sigmas[: handoff + 1], options, stage="base", **run)
    if handoff < steps:
        scores = (refiner.aesthetic_score, refiner.negative_aesthetic_score)
        refined = _stage_denoiser(refiner.pipeline, prompts.refiner, options, scores)
        x = run_sampler(wrap(refined), x, sigmas[handoff:], options, stage="refiner", **run)
    return x
