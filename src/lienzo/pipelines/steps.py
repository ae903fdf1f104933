"""The pure steps every generation composes: conditioning, seeded noise, the denoiser, sampling, VAE.

Each step takes the components it uses (UNet and spec, text encoders, VAE) rather than a whole model,
as graph nodes pass MODEL, CLIP and VAE separately. Sampler state (latents, noise, sigmas) stays in
float32; the networks run in their own dtype and memory format, inputs cast on the way in and outputs
cast back to float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm

from lienzo.devices import cpu_threads_for
from lienzo.diffusion import (
    Conditioning,
    Denoise,
    Denoiser,
    ModelSampling,
    NoiseSource,
    get_sigmas,
    guided_denoiser,
    img2img_steps,
    noise_latent,
    parameterization_for,
    sample,
)
from lienzo.errors import InvalidArgumentError
from lienzo.models.feature_reuse import FeatureReuse
from lienzo.models.specs import FamilySpec, NoiseScheduleConfig
from lienzo.models.unet import UNetModel, sdxl_vector_conditioning
from lienzo.models.vae import AutoencoderKL
from lienzo.models.vae_tiling import decode_tiled, encode_tiled
from lienzo.pipelines.images import images_to_tensor, tensor_to_images
from lienzo.pipelines.options import AESTHETIC_SCORES, GenerationOptions, hires_options
from lienzo.text.conditioning import TextEncoders
from lienzo.text.network_tags import extract_lora_tags
from lienzo.text.prompt_schedule import merge_schedule, prompt_schedule, schedule_index, text_at

TOKENS_PER_CHUNK = 77
"""Tokens the text encoders read per 75-token prompt chunk (with the start and end tokens)."""
AUTO_TILING_CELLS = 128 * 128
"""With `vae_tiling` None, latents with more cells than SDXL's native 1024x1024 image run the VAE in
tiles; every family's native size decodes whole, as in diffusers."""

StepCallback = Callable[[dict], None]
"""Called after every sampler step with the sampler's {"i", "x", "sigma", "sigma_next", "denoised"}
plus "stage" ("base", "refiner" or "hires") and "total" (steps in this stage)."""


BASE_PASS = "base"
"""The timeline of a generation's first pass: txt2img or img2img, the refiner continuing its steps."""
HIRES_PASS = "hires"
"""The timeline of the hires pass (the stage name `sample_latents` gets from `hires_fix`)."""


@dataclass(frozen=True)
class TextTimeline:
    """Which text the prompt and the negative prompt read at each sampling step of one pass: entries
    (until_step, prompt text, negative text), indices into `ScheduledTexts`, looked up by A1111's rule
    (`schedule_index`). Made for A1111's `steps` (and `hires_steps` for the hires pass)."""

    steps: int
    hires_steps: int | None
    entries: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class ScheduledTexts:
    """Every text an edited prompt and negative prompt read while sampling (A1111 prompt editing and
    alternation), encoded in one call so that all have the same number of 75-token chunks: context
    (V, L, C) and pooled (V, P) rows, the prompt's texts first; and each pass's timeline."""

    context: torch.Tensor
    pooled: torch.Tensor | None
    texts: tuple[str, ...]
    timelines: dict[str, TextTimeline]


@dataclass(frozen=True)
class PromptTexts:
    """The text encoders' output for the prompt and the negative prompt (each with batch 1); with prompt
    editing, that of the first step, and in `scheduled` every text the sampling steps read."""

    positive: torch.Tensor
    negative: torch.Tensor
    pooled_positive: torch.Tensor | None
    pooled_negative: torch.Tensor | None
    embeddings_used: tuple[str, ...] = ()
    scheduled: ScheduledTexts | None = None

    def row(self, positive: int, negative: int) -> PromptTexts:
        """The fixed texts of scheduled rows `positive` and `negative`."""
        context, pooled = self.scheduled.context, self.scheduled.pooled
        return PromptTexts(
            positive=context[positive : positive + 1],
            negative=context[negative : negative + 1],
            pooled_positive=None if pooled is None else pooled[positive : positive + 1],
            pooled_negative=None if pooled is None else pooled[negative : negative + 1],
            embeddings_used=self.embeddings_used,
        )

    def schedule(
        self, pass_name: str = BASE_PASS, *, steps: int | None = None, run_steps: int | None = None
    ) -> list[tuple[int, PromptTexts]]:
        """[(until_step, fixed texts), ...] of a pass, for `schedule_index` (one object per pair of texts);
        one entry without edits.

        `steps` (the options' steps of a first pass) and `run_steps` (the steps a hires pass runs), where
        given, must be those the timeline was made for.
        """
        if self.scheduled is None:
            return [(0, self)]
        timeline = self.scheduled.timelines.get(pass_name)
        if timeline is None:
            raise ValueError(
                f"the prompt's edits have no {pass_name} timeline: encode the prompts with the options "
                "you sample with"
            )
        if steps not in (None, timeline.steps) or run_steps not in (None, timeline.hires_steps):
            raise ValueError(
                f"the prompt's edits were scheduled for {timeline.steps} steps (hires pass: "
                f"{timeline.hires_steps}), not {steps} ({run_steps}): encode the prompts with the options "
                "you sample with"
            )
        pairs = {pair: self.row(*pair) for pair in dict.fromkeys(entry[1:] for entry in timeline.entries)}
        return [(until, pairs[positive, negative]) for until, positive, negative in timeline.entries]


def prompt_timelines(options: GenerationOptions) -> dict[str, tuple[int, int | None]]:
    """A1111's (steps, hires_steps) of each pass of a generation: the first pass on options.steps, the
    hires pass (with options.hires) on the steps it runs (`hires_options`' steps at its strength)."""
    timelines: dict[str, tuple[int, int | None]] = {BASE_PASS: (options.steps, None)}
    if options.hires is not None:
        second = hires_options(options)
        timelines[HIRES_PASS] = (options.steps, img2img_steps(second.steps, second.strength))
    return timelines


def _timeline(
    positive: list[tuple[int, str]],
    negative: list[tuple[int, str]],
    rows: tuple[dict[str, int], dict[str, int]],
) -> tuple[tuple[int, int, int], ...]:
    """(until_step, prompt row, negative row) entries of one pass: both schedules' boundaries, neighbours
    that read the same rows joined."""
    entries: list[tuple[int, int, int]] = []
    for until in sorted({step for step, _ in positive} | {step for step, _ in negative}):
        pair = (rows[0][text_at(positive, until)], rows[1][text_at(negative, until)])
        if entries and entries[-1][1:] == pair:
            entries.pop()
        entries.append((until, *pair))
    return tuple(entries)


def encode_texts(clip: TextEncoders, options: GenerationOptions) -> PromptTexts:
    """Run the text encoders once for the prompt and the negative prompt together, without their
    `<lora:…>` tags (the Pipeline applies those).

    With prompt editing or alternation (`lienzo.text.prompt_schedule`) every text either prompt reads in
    any pass is encoded in that one call, so all get the same number of 75-token chunks (the longest
    one's) and the context keeps its shape while sampling; a prompt without edits is encoded exactly as
    before. Small text encoders (the built-in model's) run on one CPU thread (lienzo.devices).
    """
    prompts = [extract_lora_tags(text)[0] for text in (options.prompt, options.negative_prompt)]
    passes = prompt_timelines(options)
    schedules = {
        name: tuple(merge_schedule(prompt_schedule(prompt, *timeline)) for prompt in prompts)
        for name, timeline in passes.items()
    }
    positive = list(dict.fromkeys(text for pair in schedules.values() for _, text in pair[0]))
    negative = list(dict.fromkeys(text for pair in schedules.values() for _, text in pair[1]))
    widest = max(model.config.hidden_size for model in clip.models)
    device = next(clip.models[0].parameters()).device
    with cpu_threads_for(device, TOKENS_PER_CHUNK, widest):
        encoded = clip.encode([*positive, *negative], clip_skip=options.clip_skip)
    context = encoded.context.float()
    pooled = None if encoded.pooled is None else encoded.pooled.float()
    scheduled = None
    if len(positive) > 1 or len(negative) > 1:
        rows = (
            {text: row for row, text in enumerate(positive)},
            {text: row for row, text in enumerate(negative, start=len(positive))},
        )
        timelines = {
            name: TextTimeline(*passes[name], _timeline(*pair, rows)) for name, pair in schedules.items()
        }
        scheduled = ScheduledTexts(context, pooled, (*positive, *negative), timelines)
    first_negative = len(positive)
    return PromptTexts(
        positive=context[:1],
        negative=context[first_negative : first_negative + 1],
        pooled_positive=None if pooled is None else pooled[:1],
        pooled_negative=None if pooled is None else pooled[first_negative : first_negative + 1],
        embeddings_used=encoded.embeddings_used,
        scheduled=scheduled,
    )


def vector_values(kind: str, width: int, height: int, aesthetic_score: float) -> torch.Tensor:
    """SDXL micro-conditioning (Podell et al. 2023, sec. 2.2): original size, crop (0, 0), target size or
    aesthetic score, as a (1, 6) or (1, 5) float tensor."""
    size_and_crop = [float(height), float(width), 0.0, 0.0]
    last = [float(height), float(width)] if kind == "sdxl" else [float(aesthetic_score)]
    return torch.tensor([size_and_crop + last])


def conditioning_pair(
    spec: FamilySpec,
    texts: PromptTexts,
    width: int,
    height: int,
    aesthetic_scores: tuple[float, float] = AESTHETIC_SCORES,
) -> tuple[Conditioning, Conditioning]:
    """(cond, uncond) for the UNet: text contexts, plus the SDXL vector y at this image size."""
    kind = spec.vector_conditioning
    if kind is None:
        return Conditioning(texts.positive), Conditioning(texts.negative)
    dim = spec.unet.addition_time_embed_dim
    ys = [
        sdxl_vector_conditioning(pooled, vector_values(kind, width, height, score), dim)
        for pooled, score in zip(
            (texts.pooled_positive, texts.pooled_negative), aesthetic_scores, strict=True
        )
    ]
    return Conditioning(texts.positive, ys[0]), Conditioning(texts.negative, ys[1])


def latent_shape(spec: FamilySpec, width: int, height: int) -> tuple[int, int, int]:
    """(channels, height, width) of one item's latent for an image of width x height pixels; a size that
    is not a multiple of the VAE's factor (8) raises InvalidArgumentError naming the nearest one."""
    factor = spec.vae.downscale_factor
    for name, value in (("width", width), ("height", height)):
        if value % factor:
            nearest = max(factor, round(value / factor) * factor)
            raise InvalidArgumentError(
                f"{name} {value} does not fit this model: use a multiple of {factor}, e.g. {nearest}"
            )
    return spec.vae.embed_dim, height // factor, width // factor


def item_generators(options: GenerationOptions) -> list[torch.Generator]:
    """One CPU generator per batch item, item i seeded with seed + i."""
    return [torch.Generator("cpu").manual_seed(options.item_seed(i)) for i in range(options.batch_size)]


def slerp(t: float, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (Shoemake 1985), linear when nearly parallel."""
    cosine = (start.flatten() @ end.flatten()) / (start.norm() * end.norm())
    if cosine.abs() > 0.9995:
        return (1 - t) * start + t * end
    omega = torch.arccos(cosine)
    return (torch.sin((1 - t) * omega) * start + torch.sin(t * omega) * end) / torch.sin(omega)


def initial_noise(
    options: GenerationOptions, shape: tuple[int, ...], generators: list[torch.Generator] | None = None
) -> torch.Tensor:
    """(batch, *shape) float32 CPU noise: item i from generators[i] (default: fresh ones, seed + i),
    slerped toward the variation seed's noise.

    Variation (A1111 semantics): with a variation seed and strength s, item i's noise is
    slerp(s, noise(seed + i), noise(variation_seed + i)).
    """
    items = []
    for index, generator in enumerate(generators or item_generators(options)):
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        variation_seed = options.item_variation_seed(index)
        if variation_seed is not None and options.variation_strength > 0:
            variation_generator = torch.Generator("cpu").manual_seed(variation_seed)
            variation = torch.randn(shape, generator=variation_generator, dtype=torch.float32)
            noise = slerp(options.variation_strength, noise, variation)
        items.append(noise)
    return torch.stack(items)


@functools.cache
def model_sampling(schedule: NoiseScheduleConfig) -> ModelSampling:
    """The sigma table of a family's discrete noise schedule (cached: specs share a few schedules)."""
    return ModelSampling.from_config(schedule)


def schedule_sigmas(spec: FamilySpec, options: GenerationOptions) -> torch.Tensor:
    """The full float32 sigma schedule of the options' scheduler and steps on the family's noise table."""
    return get_sigmas(options.scheduler, options.steps, model_sampling(spec.schedule))


ConditioningHook = Callable[[torch.Tensor, torch.Tensor, Conditioning], Conditioning]
"""`hook(x, t, cond) -> cond` run before each UNet call on its inputs (ControlNet residuals)."""


def network(
    unet: UNetModel, hook: ConditioningHook | None = None, reuse: FeatureReuse | None = None
) -> Callable[..., torch.Tensor]:
    """The UNet as `unet(x, t, cond)` taking float32 inputs and returning float32 output; `hook` may
    add to each call's conditioning, `reuse` is DeepCache's state (lienzo.models.feature_reuse)."""
    weight = next(unet.parameters())

    def run(x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        x = x.to(weight.dtype).contiguous(memory_format=torch.channels_last)
        cond = cond.to(weight.dtype)
        if hook is not None:
            cond = hook(x, t, cond)
        if reuse is not None:
            return unet(x, t, cond, reuse).float()
        return unet(x, t, cond).float()

    return run


def make_denoiser(
    unet: UNetModel,
    spec: FamilySpec,
    cond: Conditioning,
    uncond: Conditioning,
    options: GenerationOptions,
    *,
    control: ConditioningHook | None = None,
    sigma_interval: tuple[float, float] = (0.0, math.inf),
    reuse: FeatureReuse | None = None,
) -> Denoise:
    """`denoise(x, sigma) -> x0` of the UNet with classifier-free guidance (Ho & Salimans 2022) at
    options.cfg while sigma lies in `sigma_interval`; everything in the conditionings (context, y,
    concat, control) reaches the UNet, `control` adds ControlNet residuals to each call and `reuse`
    carries DeepCache's features between calls."""
    device = next(unet.parameters()).device
    sampling = model_sampling(spec.schedule)
    denoiser = Denoiser(network(unet, control, reuse), parameterization_for(spec.prediction), sampling)
    return guided_denoiser(
        denoiser,
        cond.to(device),
        uncond.to(device),
        options.cfg,
        guidance_rescale=options.guidance_rescale,
        sigma_interval=sigma_interval,
    )


SIGMA_MATCH = 1e-5
"""Relative tolerance within which a sigma counts as a schedule's sigma (samplers that go through t =
-log sigma give it back a few ulps off)."""


def step_at(sigmas: list[float], sigma: float) -> int:
    """Index i of the sampling step of a run over `sigmas` (decreasing) whose interval (sigmas[i+1],
    sigmas[i]] holds sigma; 0 at or above sigmas[0], the last step at or below its end. A second-order
    sampler's evaluation at sigmas[i+1] thus belongs to step i + 1, where the next step begins."""
    lower = sigma * (1 - SIGMA_MATCH)
    step = sum(1 for level in sigmas[1:-1] if level >= lower)
    return min(step, max(len(sigmas) - 2, 0))


def scheduled_denoiser(denoisers: list[Denoise], until_steps: list[int], sigmas: torch.Tensor) -> Denoise:
    """`denoise(x, sigma)` that runs denoisers[k] for the sampling step of `sigmas` holding sigma (`step_at`),
    k being the entry of `until_steps` that step reads (A1111's rule, `schedule_index`); one denoiser alone
    is returned as it is."""
    if len(denoisers) == 1:
        return denoisers[0]
    levels = [float(level) for level in sigmas]

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        step = step_at(levels, float(sigma.max()))
        return denoisers[schedule_index(until_steps, step)](x, sigma)

    return denoise


def inpaint_blend_denoiser(
    denoise: Denoise, latent: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor
) -> Denoise:
    """Latent blending for ordinary models (as in A1111/ComfyUI inpainting): before each model call the
    kept region (mask 0) of x becomes the original re-noised to the current sigma, and the model's x0
    estimate keeps the original there. `mask` is 1 where to repaint, shaped like `latent` or broadcastable.
    """

    def blended(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x = x * mask + noise_latent(latent, noise, sigma) * (1 - mask)
        return denoise(x, sigma) * mask + latent * (1 - mask)

    return blended


def run_sampler(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: GenerationOptions,
    *,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
    stage: str = "base",
    progress: bool = True,
) -> torch.Tensor:
    """Sample from x at sigmas[0] down to sigmas[-1] with the options' sampler and sampler options, a
    tqdm bar and the callback."""
    total = len(sigmas) - 1
    if total == 0:
        return x
    with tqdm(total=total, desc=f"{stage} {options.sampler}", disable=not progress, leave=False) as bar:

        def on_step(state: dict) -> None:
            bar.update(1)
            if callback is not None:
                callback({**state, "stage": stage, "total": total})

        with torch.inference_mode():
            return sample(
                denoise,
                x.float(),
                sigmas.to(x.device),
                sampler=options.sampler,
                noise=noise,
                callback=on_step,
                **dict(options.sampler_options),
            )


def vae_tiled(tiling: bool | None, latent_height: int, latent_width: int) -> bool:
    """Whether the VAE runs in tiles: `tiling`, or where that is None, for latents with more cells than
    AUTO_TILING_CELLS."""
    if tiling is None:
        return latent_height * latent_width > AUTO_TILING_CELLS
    return tiling


def decode_latents(
    vae: AutoencoderKL, latents: torch.Tensor, tiling: bool | None = None
) -> list[Image.Image]:
    """Images from diffusion latents: VAE-decode latents / scaling_factor, one item at a time (in
    overlapping tiles for large latents, see vae_tiled; small CPU work on one thread, see
    lienzo.devices.cpu_threads_for)."""
    decode = functools.partial(decode_tiled, vae) if vae_tiled(tiling, *latents.shape[-2:]) else vae.decode
    weight = next(vae.parameters())
    images = []
    cells = latents.shape[-2] * latents.shape[-1]
    with torch.inference_mode(), cpu_threads_for(weight.device, cells, vae.config.ch):
        for item in latents:
            scaled = (item[None] / vae.config.scaling_factor).to(device=weight.device, dtype=weight.dtype)
            decoded = decode(scaled.contiguous(memory_format=torch.channels_last))
            images.extend(tensor_to_images(decoded))
    return images


def encode_images(
    vae: AutoencoderKL, images: list[Image.Image] | torch.Tensor, tiling: bool | None = None
) -> torch.Tensor:
    """Diffusion latents (float32) of images: scaling_factor * the VAE posterior mean (in overlapping
    tiles for large images, see vae_tiled)."""
    pixels = images if isinstance(images, torch.Tensor) else images_to_tensor(images)
    factor = vae.downscale_factor
    tiled = vae_tiled(tiling, pixels.shape[-2] // factor, pixels.shape[-1] // factor)
    encode = functools.partial(encode_tiled, vae) if tiled else vae.encode
    weight = next(vae.parameters())
    latents = []
    with torch.inference_mode():
        for item in pixels:
            item = item[None].to(device=weight.device, dtype=weight.dtype)
            posterior = encode(item.contiguous(memory_format=torch.channels_last))
            latents.append(posterior.mean.float())
    return torch.cat(latents) * vae.config.scaling_factor


def switch_index(steps: int, fraction: float) -> int:
    """Index of the sigma where a hand-off at `fraction` of `steps` happens (rounded to a step)."""
    return min(max(math.floor(fraction * steps + 0.5), 0), steps)
