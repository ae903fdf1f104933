"""The one sampling path: seeded noise, sigmas, the guided denoiser, the sampler, and the refiner hand-off.

txt2img, img2img, inpainting, outpainting, depth-to-image and the hires pass all call `sample_latents`;
it is the function a KSampler node wraps. Image-guided modes add their `ImageConditions`, built at the
size of the pass, so the hires pass of inpainting or depth gets them at its own size.

```
options ─► seeds ─► initial noise (item i: seed + i) ─┐
start latent (img2img) ───────────────────────────────┼─► x = start + sigma_0 * noise
options.scheduler, steps, strength ─► sigmas ─────────┘
stage: UNet + spec + Conditioning(context, y, concat, control) ─► guided denoiser ─► [latent blend]
    ─► sampler(denoise, x, sigmas, noise=SeededNoise(row i: seed + i), callback) ─► latents
```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from lienzo.devices import cpu_threads_for
from lienzo.diffusion import Denoise, SeededNoise, img2img_sigmas, noise_latent
from lienzo.models.feature_reuse import FeatureReuse
from lienzo.models.specs import FamilySpec
from lienzo.models.unet import UNetModel
from lienzo.pipelines.control_apply import ControlApplier, ControlHint
from lienzo.pipelines.fast_sampling import (
    feature_reuse,
    guidance_interval,
    refreshing_denoiser,
    token_merging,
)
from lienzo.pipelines.options import AESTHETIC_SCORES, GenerationOptions
from lienzo.pipelines.steps import (
    BASE_PASS,
    HIRES_PASS,
    PromptTexts,
    StepCallback,
    conditioning_pair,
    initial_noise,
    inpaint_blend_denoiser,
    item_generators,
    latent_shape,
    make_denoiser,
    model_sampling,
    run_sampler,
    schedule_sigmas,
    scheduled_denoiser,
    switch_index,
)


@dataclass(frozen=True)
class ImageConditions:
    """What an image-guided mode adds at one size: extra UNet input channels (`concat`: inpaint mask and
    masked image, depth), or for latent blending the original latent and the mask (1 = repaint); and the
    ControlNet units with their control images at this size (`control`)."""

    concat: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    control: tuple[ControlHint, ...] = ()

    def to(self, device: torch.device) -> ImageConditions:
        """The tensors moved to `device` (control images move with their ControlNets)."""
        moved = {name: getattr(self, name) for name in ("concat", "latent", "mask")}
        return replace(self, **{name: None if t is None else t.to(device) for name, t in moved.items()})


ConditionsAt = Callable[[int, int], ImageConditions]
"""`conditions(width, height)`: a mode's ImageConditions for a pass at that image size."""


@dataclass(frozen=True)
class Stage:
    """One model's share of sampling: its UNet and spec, its prompt encodings and aesthetic scores."""

    unet: UNetModel
    spec: FamilySpec
    texts: PromptTexts
    name: str = "base"
    aesthetic_scores: tuple[float, float] = AESTHETIC_SCORES

    def denoiser(
        self,
        options: GenerationOptions,
        conditions: ImageConditions,
        noise: torch.Tensor,
        sigmas: torch.Tensor | None = None,
        pass_name: str = BASE_PASS,
    ) -> Denoise:
        """The stage's guided denoiser at the options' size; extra channels go to a UNet that takes
        them, latent blending serves one that does not.

        With prompt editing, each model call reads the texts of its sampling step: the step of the run
        over `sigmas` (the whole run's, of which the stage samples a part) that holds its sigma, on the
        pass's timeline (`PromptTexts.schedule`).
        """
        run_steps = None if sigmas is None else len(sigmas) - 1
        if pass_name == BASE_PASS:
            entries = self.texts.schedule(pass_name, steps=options.steps)
        else:
            entries = self.texts.schedule(pass_name, run_steps=run_steps)
        if len(entries) > 1 and sigmas is None:
            raise ValueError("a prompt with edits needs the run's sigmas to know each call's step")
        reuse = feature_reuse(options.fast)
        guided = {id(texts): self._guided(texts, options, conditions, sigmas, reuse) for _, texts in entries}
        denoisers = [guided[id(texts)] for _, texts in entries]
        denoise = scheduled_denoiser(denoisers, [until for until, _ in entries], sigmas)
        if reuse is not None:
            denoise = refreshing_denoiser(denoise, reuse, options.fast.deepcache, sigmas)
        if conditions.mask is not None and self.spec.concat_channels == 0:
            denoise = inpaint_blend_denoiser(denoise, conditions.latent, conditions.mask, noise)
        return denoise

    def _guided(
        self,
        texts: PromptTexts,
        options: GenerationOptions,
        conditions: ImageConditions,
        sigmas: torch.Tensor | None,
        reuse: FeatureReuse | None = None,
    ) -> Denoise:
        """The CFG denoiser of one fixed pair of texts (cond and uncond in one batched pass, guidance
        within the options' CFG cutoff); ControlNet units add their residuals to each call; `reuse` is
        the stage's DeepCache state."""
        cond, uncond = conditioning_pair(
            self.spec, texts, options.width, options.height, self.aesthetic_scores
        )
        if self.spec.concat_channels > 0:
            cond, uncond = replace(cond, concat=conditions.concat), replace(uncond, concat=conditions.concat)
        control = None
        if conditions.control:
            if sigmas is None:
                raise ValueError("ControlNet units need the run's sigmas to know each call's step")
            sampling = model_sampling(self.spec.schedule)
            control = ControlApplier(conditions.control, sigmas, sampling, options.batch_size)
        interval = guidance_interval(options.fast, sigmas)
        return make_denoiser(
            self.unet, self.spec, cond, uncond, options, control=control, sigma_interval=interval, reuse=reuse
        )


def sample_latents(
    stages: list[Stage],
    options: GenerationOptions,
    *,
    start: torch.Tensor | None = None,
    conditions: ConditionsAt | None = None,
    callback: StepCallback | None = None,
    progress: bool = True,
    stage_name: str | None = None,
) -> torch.Tensor:
    """Final latents (scaled, float32) of options.batch_size items, all sampled together.

    Item i's initial noise and every noise its sampler draws come from seed + i, so any batch gives
    each item the image it gets alone. Sampling starts at options.strength of the schedule from
    `start` + noise (pure noise without `start`). With a second stage (the SDXL refiner), the first
    runs until options.refiner.switch_at of the steps and the second the rest; ControlNet units in
    `conditions` guide the first stage only (a refiner is another family, as in A1111). Small CPU work
    (the built-in model) samples on one thread (lienzo.devices.cpu_threads_for).

    Prompt edits count the steps of this run from 0, the refiner's continuing the base's, as A1111 counts
    its denoiser's calls: on the timeline of options.steps, or for the hires pass (stage_name "hires")
    on A1111's hires timeline over the steps this run samples.
    """
    base = stages[0]
    shape = latent_shape(base.spec, options.width, options.height)
    generators = item_generators(options)
    device = next(base.unet.parameters()).device
    noise = initial_noise(options, shape, generators).to(device)
    sigmas = img2img_sigmas(schedule_sigmas(base.spec, options), options.strength)
    x = noise_latent(None if start is None else start.to(device).float(), noise, float(sigmas[0]))
    steps = len(sigmas) - 1
    handoff = steps if len(stages) == 1 else switch_index(steps, options.refiner.switch_at)
    parts = [(stages[0], sigmas[: handoff + 1]), *[(stage, sigmas[handoff:]) for stage in stages[1:]]]
    extra = conditions(options.width, options.height) if conditions else ImageConditions()
    extra = extra.to(device)
    sampler_noise = SeededNoise(generators)
    pass_name = HIRES_PASS if stage_name == HIRES_PASS else BASE_PASS
    for index, (stage, part) in enumerate(parts):
        stage_extra = extra if index == 0 else replace(extra, control=())
        threads = cpu_threads_for(device, shape[1] * shape[2], stage.unet.config.model_channels)
        with threads, token_merging(stage.unet, options.fast.tome):
            x = run_sampler(
                stage.denoiser(options, stage_extra, noise, sigmas, pass_name),
                x,
                part,
                options,
                noise=sampler_noise,
                callback=callback,
                stage=stage_name or stage.name,
                progress=progress,
            )
    return x
