"""The pipeline x-ray: one txt2img run watched from inside (tokens, schedule, trajectory, per-word maps).

```
prompt ─► token_breakdown (per tokenizer: chunks, weights, BREAK, embeddings, tags, words)
options ─► schedule_sigmas ─► sigmas + timesteps
pipe.generate ◄── capture_cross_attention (hooks only inside this call) ─► word maps (DAAM)
          └── step callback every k steps ─► decoded x0 prediction and noisy latent
```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lienzo.diffusion import img2img_sigmas
from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.options import GenerationOptions, random_seed, resolve_options
from lienzo.pipelines.steps import decode_latents, latent_shape, model_sampling, schedule_sigmas
from lienzo.pipelines.xray.capture import MapSettings, capture_cross_attention
from lienzo.pipelines.xray.files import save_xray
from lienzo.pipelines.xray.pictures import map_image
from lienzo.pipelines.xray.tokens import TokenBreakdown, Word, token_breakdown

DEFAULT_EVERY = 5
REFUSED_SETTINGS = ("batch_size", "hires", "refiner")
"""Settings the x-ray does not take: it watches one image of one pass of one model."""


@dataclass(frozen=True)
class Schedule:
    """The sampling schedule of a run: sampler, scheduler, the sigmas (ending in 0) and the timestep the
    model is given at each step (the fractional timestep of sigmas[i] on the model's noise table)."""

    sampler: str
    scheduler: str
    sigmas: tuple[float, ...]
    timesteps: tuple[float, ...]

    def to_json(self) -> dict:
        """A JSON-serialisable dict of the schedule."""
        return {
            "sampler": self.sampler,
            "scheduler": self.scheduler,
            "sigmas": list(self.sigmas),
            "timesteps": list(self.timesteps),
        }


@dataclass(frozen=True)
class TrajectoryFrame:
    """One recorded step: the decoded x0 prediction and the decoded noisy latent after the step (scaled by
    1 / sqrt(sigma^2 + 1), the model input scaling, so it decodes to a visible image)."""

    step: int
    sigma: float
    prediction: Image.Image
    noisy: Image.Image


@dataclass(frozen=True)
class WordMap:
    """A word's cross-attention map at the image's size: the sum of its tokens' maps (DAAM)."""

    word: Word
    values: np.ndarray

    def image(self) -> Image.Image:
        """The map as a grayscale image, its lowest value black and its peak white."""
        return map_image(self.values)


@dataclass(frozen=True)
class XRay:
    """What one generation did: its image, options, token breakdown, schedule, trajectory and word maps."""

    image: Image.Image
    options: GenerationOptions
    tokens: TokenBreakdown
    schedule: Schedule
    trajectory: tuple[TrajectoryFrame, ...]
    maps: tuple[WordMap, ...]

    def word_map(self, text: str, occurrence: int = 0) -> WordMap:
        """The map of a word by its text (case-insensitive; `occurrence` picks among repeats)."""
        found = [entry for entry in self.maps if entry.word.text.lower() == text.lower()]
        if len(found) <= occurrence:
            words = ", ".join(entry.word.text for entry in self.maps)
            raise InvalidArgumentError(f"the prompt has no word {text!r} (words: {words})")
        return found[occurrence]

    def save(self, folder: str | Path) -> list[Path]:
        """Write the x-ray's files into `folder` (see lienzo.pipelines.xray.files.save_xray)."""
        return save_xray(self, Path(folder))


@dataclass
class TrajectoryRecorder:
    """A step callback that decodes the x0 prediction and the noisy latent every `every` steps and at the
    last step."""

    vae: object
    every: int

    def __post_init__(self) -> None:
        if self.every < 1:
            raise InvalidArgumentError(f"--every must be 1 or more steps, got {self.every}")
        self.frames: list[TrajectoryFrame] = []

    def __call__(self, state: dict) -> None:
        step, total = state["i"] + 1, state["total"]
        if step % self.every and step != total:
            return
        sigma = float(state["sigma_next"])
        noisy = state["x"][:1] / (sigma**2 + 1) ** 0.5
        prediction, noisy_image = decode_latents(self.vae, torch.cat([state["denoised"][:1], noisy]))
        self.frames.append(TrajectoryFrame(step, sigma, prediction, noisy_image))


def chained(recorder: TrajectoryRecorder, callback: Callable[[dict], None] | None) -> Callable[[dict], None]:
    """The step callback that records the trajectory, then calls the caller's callback."""
    if callback is None:
        return recorder

    def on_step(state: dict) -> None:
        recorder(state)
        callback(state)

    return on_step


def xray_options(pipe, prompt: str, settings: dict) -> GenerationOptions:
    """The run's resolved options (a random seed drawn here, once); refuses what the x-ray cannot watch."""
    refused = sorted(key for key in REFUSED_SETTINGS if settings.get(key) not in (None, 1))
    if refused:
        raise InvalidArgumentError(
            f"the x-ray watches one image of one pass: drop {', '.join(refused)} "
            "(lienzo generate makes batches, hires passes and refined images)"
        )
    values = {key: value for key, value in settings.items() if key not in REFUSED_SETTINGS}
    if values.get("seed") is None:
        values["seed"] = random_seed()
    options = resolve_options(pipe.spec, prompt=prompt, **values)
    return options


def run_xray(
    pipe,
    prompt: str,
    *,
    every: int = DEFAULT_EVERY,
    map_settings: MapSettings | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = False,
    **settings,
) -> XRay:
    """X-ray a txt2img run of `prompt`; `settings` are `Pipeline.generate`'s (negative_prompt, steps, cfg,
    sampler, scheduler, seed, width, height, clip_skip, ...), one image, no hires pass or refiner.

    The trajectory records every `every` steps; `map_settings` says how the word maps aggregate the
    cross-attention (layers, steps, start token, upsampling; MapSettings() by default, see
    lienzo.pipelines.xray.capture); `callback(state)` runs after every sampler step, as generate's does
    (progress, previews, an interruption raised there ends the run with the hooks removed)."""
    if not prompt or not prompt.strip():
        raise InvalidArgumentError('the prompt is empty: give the prompt to x-ray, e.g. "a red circle"')
    options = xray_options(pipe, prompt, pipe.resolve_controlnets(settings))
    tokens = token_breakdown(prompt, pipe.clip)
    if not tokens.words:
        raise InvalidArgumentError(
            f"the prompt {prompt!r} has no words to map (only tags or punctuation); add words to it"
        )
    sigmas = img2img_sigmas(schedule_sigmas(pipe.spec, options), options.strength)
    timesteps = model_sampling(pipe.spec.schedule).sigma_to_t(sigmas[:-1].double())
    schedule = Schedule(
        options.sampler,
        options.scheduler,
        tuple(float(s) for s in sigmas),
        tuple(float(t) for t in timesteps),
    )
    recorder = TrajectoryRecorder(pipe.vae, every)
    _, latent_height, latent_width = latent_shape(pipe.spec, options.width, options.height)
    kept = {key: getattr(options, key) for key in _GENERATE_FIELDS}
    aggregation = map_settings or MapSettings()
    latent_size = (latent_height, latent_width)
    max_timestep = aggregation.max_timestep(list(schedule.timesteps))
    with capture_cross_attention(pipe.unet, latent_size, aggregation, max_timestep) as capture:
        (image,) = pipe.generate(callback=chained(recorder, callback), progress=progress, **kept)
    token_maps = capture.token_maps(options.height, options.width)
    word_maps = tuple(
        WordMap(word, token_maps[list(word.positions)].sum(dim=0).cpu().numpy()) for word in tokens.words
    )
    return XRay(image, options, tokens, schedule, tuple(recorder.frames), word_maps)


_GENERATE_FIELDS = (
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "seed",
    "clip_skip",
    "variation_seed",
    "variation_strength",
    "guidance_rescale",
    "sampler_options",
    "vae_tiling",
    "controlnets",
)
"""The resolved options handed back to Pipeline.generate."""
