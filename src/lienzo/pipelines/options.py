"""Generation settings: the user's values, the family defaults that fill the gaps, and their checks.

Defaults (A1111's current ones): steps 20, CFG scale 7.0, sampler `dpmpp_2m` with the `karras`
schedule, size = the family's native resolution (512 SD 1.x / SD 2 base, 768 SD 2-v, 1024 SDXL),
clip skip 1, denoising strength 1.0 for txt2img (img2img passes its own), a random seed.

Every generated image carries `GenerationOptions.to_record(...)` in `image.info["lienzo"]`; its keys
are listed in `RECORD_KEYS` and are the contract with the metadata writer.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lienzo.diffusion import SCHEDULERS, check_sampler_options, resolve_sampler
from lienzo.errors import InvalidArgumentError
from lienzo.models.specs import FamilySpec
from lienzo.pipelines.control_units import CONTROL_MODES, RESIZE_MODES, ControlUnit, check_control_unit
from lienzo.pipelines.fast_modes import FastModes, check_fast_modes, fast_modes_from

DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0
DEFAULT_SAMPLER = "dpmpp_2m"
DEFAULT_SCHEDULER = "karras"
MAX_SEED = 2**32 - 1
HIRES_UPSCALERS = ("latent", "latent-nearest", "image")
AESTHETIC_SCORES = (6.0, 2.5)
"""The SDXL refiner's aesthetic-score conditioning for the prompt and the negative prompt (sgm defaults)."""
SAFETY_MODES = ("auto", "on", "off")
"""The safety checker's settings: auto (on when the model folder ships one, as diffusers), on, off."""

RECORD_KEYS = (
    "mode",
    "prompt",
    "negative_prompt",
    "steps",
    "sampler",
    "scheduler",
    "cfg",
    "seed",
    "width",
    "height",
    "batch_size",
    "batch_index",
    "clip_skip",
    "strength",
    "variation_seed",
    "variation_strength",
    "guidance_rescale",
    "sampler_options",
    "hires",
    "refiner",
    "mask",
    "loras",
    "hypernetworks",
    "vae",
    "embeddings",
    "model",
    "model_hash",
    "family",
    "controlnets",
    "safety_checker",
    "fast",
)
"""Keys of `image.info["lienzo"]`. `seed` and `variation_seed` are the batch item's own (base + index);
`hires` is None or {"scale", "steps", "strength", "upscaler", "width", "height"}; `refiner` is None or
{"model", "model_hash", "switch_at"}; `mask` is None or inpainting's {"blur", "only_masked", "padding"};
`strength` is the denoising strength (1.0 for plain txt2img); `sampler_options` is a dict of the options
given to the sampler (eta, s_noise, ...), empty for its defaults;
`mode` is "txt2img", "img2img", "inpaint", "outpaint" or "depth2img"; `loras` maps each applied LoRA's
name to its short hash (A1111's "Lora hashes"), `hypernetworks` each applied hypernetwork's name to its
short hash (10 hex digits, A1111's; written as "Hypernet hashes"), `embeddings` each textual-inversion
embedding the prompts used ("TI hashes"); `vae` the name of a VAE used instead of the model's own
(A1111's "VAE"), else None; `controlnets` a list with one dict per ControlNet unit ({"module", "model",
"model_hash", "weight", "resize_mode", "guidance_start", "guidance_end", "control_mode", "threshold_a",
"threshold_b"}; modes by their A1111 names); `safety_checker` None when no checker ran, else its verdict
(lienzo.pipelines.safety: "passed" or "flagged NSFW (blacked out)"); `fast` the opt-in fast modes
({"cfg_cutoff", "deepcache", "tome"}, lienzo.pipelines.fast_modes; neutral values when off)."""


@dataclass(frozen=True)
class HiresOptions:
    """Hires fix: upscale the first pass by `scale`, then img2img at `strength` for `steps` (None = same)."""

    scale: float = 2.0
    steps: int | None = None
    strength: float = 0.5
    upscaler: str = "latent"


@dataclass(frozen=True)
class RefinerOptions:
    """SDXL refiner hand-off: the base runs the first `switch_at` of the sigmas, the refiner (a model path
    or folder, loaded like `lienzo.load`) the rest, conditioned on the two aesthetic scores."""

    model: str | Path
    switch_at: float = 0.8
    aesthetic_score: float = AESTHETIC_SCORES[0]
    negative_aesthetic_score: float = AESTHETIC_SCORES[1]

    @property
    def aesthetic_scores(self) -> tuple[float, float]:
        """(prompt, negative prompt) aesthetic scores."""
        return self.aesthetic_score, self.negative_aesthetic_score


@dataclass(frozen=True)
class GenerationOptions:
    """Fully resolved settings of one generation call (no None left except the optional extras)."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    seed: int
    batch_size: int = 1
    clip_skip: int = 1
    strength: float = 1.0
    variation_seed: int | None = None
    variation_strength: float = 0.0
    guidance_rescale: float = 0.0
    sampler_options: tuple[tuple[str, float], ...] = ()
    hires: HiresOptions | None = None
    refiner: RefinerOptions | None = None
    mode: str = "txt2img"
    vae_tiling: bool | None = None
    controlnets: tuple[ControlUnit, ...] = ()
    safety_checker: str = "auto"
    fast: FastModes = FastModes()

    def item_seed(self, index: int) -> int:
        """Seed of batch item `index`: seed + index."""
        return self.seed + index

    def item_variation_seed(self, index: int) -> int | None:
        """Variation seed of batch item `index`: variation_seed + index (None when unset)."""
        return None if self.variation_seed is None else self.variation_seed + index

    def to_record(
        self,
        index: int = 0,
        *,
        model: str | None = None,
        model_hash: str | None = None,
        family: str | None = None,
        refiner_hash: str | None = None,
        loras: dict[str, str] | None = None,
        embeddings: dict[str, str] | None = None,
        hypernetworks: dict[str, str] | None = None,
        vae: str | None = None,
    ) -> dict:
        """The `image.info["lienzo"]` dict of batch item `index` (keys: RECORD_KEYS)."""
        hires = None
        if self.hires is not None:
            width, height = hires_size(self)
            hires = {**asdict(self.hires), "width": width, "height": height}
        refiner = None
        if self.refiner is not None:
            refiner = {
                "model": Path(self.refiner.model).stem,
                "model_hash": refiner_hash,
                "switch_at": self.refiner.switch_at,
            }
        record = {
            "mode": self.mode,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "steps": self.steps,
            "sampler": self.sampler,
            "scheduler": self.scheduler,
            "cfg": self.cfg,
            "seed": self.item_seed(index),
            "width": self.width,
            "height": self.height,
            "batch_size": self.batch_size,
            "batch_index": index,
            "clip_skip": self.clip_skip,
            "strength": self.strength,
            "variation_seed": self.item_variation_seed(index),
            "variation_strength": self.variation_strength,
            "guidance_rescale": self.guidance_rescale,
            "sampler_options": dict(self.sampler_options),
            "hires": hires,
            "refiner": refiner,
            "mask": None,
            "loras": dict(loras or {}),
            "hypernetworks": dict(hypernetworks or {}),
            "vae": vae,
            "embeddings": dict(embeddings or {}),
            "model": model,
            "model_hash": model_hash,
            "family": family,
            "controlnets": [control_record(unit) for unit in self.controlnets],
            "safety_checker": None,
            "fast": self.fast.to_record(),
        }
        return record


def control_record(unit: ControlUnit) -> dict:
    """A ControlNet unit's record (A1111's unit fields); the model's name and hash once it is loaded."""
    model = unit.model
    name = Path(model).stem if isinstance(model, str | Path) else model.name
    options = dict(unit.preprocess_options)
    return {
        "module": unit.preprocess,
        "model": name,
        "model_hash": None if isinstance(model, str | Path) else model.short_hash,
        "weight": unit.strength,
        "resize_mode": RESIZE_MODES[unit.resize_mode],
        "guidance_start": unit.start,
        "guidance_end": unit.end,
        "control_mode": CONTROL_MODES[unit.mode],
        "threshold_a": options.get("low_threshold", options.get("threshold")),
        "threshold_b": options.get("high_threshold"),
    }


def hires_size(options: GenerationOptions) -> tuple[int, int]:
    """(width, height) of the hires pass: the first pass scaled and rounded down to multiples of 8."""
    scale = options.hires.scale if options.hires is not None else 1.0
    return int(options.width * scale) // 8 * 8, int(options.height * scale) // 8 * 8


def hires_options(options: GenerationOptions) -> GenerationOptions:
    """The second pass's settings: the hires size, steps and strength; no further hires or refiner."""
    width, height = hires_size(options)
    hires = options.hires
    return replace(
        options,
        width=width,
        height=height,
        steps=hires.steps or options.steps,
        strength=hires.strength,
        hires=None,
        refiner=None,
    )


def random_seed() -> int:
    """A fresh seed in [0, 2**32 - 1] from the system's entropy."""
    return random.SystemRandom().randint(0, MAX_SEED)


def _check_size(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 8 or value % 8:
        fixed = max(8, round(value / 8) * 8) if isinstance(value, int | float) else 512
        raise InvalidArgumentError(f"{name} must be a positive multiple of 8, got {value}; try {fixed}")


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise InvalidArgumentError(f"{name} must lie in [0, 1], got {value}; pick a value between 0 and 1")


def _check_hires(hires: HiresOptions) -> None:
    if hires.scale <= 0:
        raise InvalidArgumentError(f"hires scale must be positive, got {hires.scale}; try 1.5 or 2")
    if hires.steps is not None and hires.steps < 1:
        raise InvalidArgumentError(f"hires steps must be 1 or more (or None = same), got {hires.steps}")
    _check_fraction("hires strength", hires.strength)
    if hires.upscaler not in HIRES_UPSCALERS:
        raise InvalidArgumentError(
            f"unknown hires upscaler {hires.upscaler!r}; use one of: {', '.join(HIRES_UPSCALERS)}"
        )


def _check_refiner(refiner: RefinerOptions) -> None:
    _check_fraction("refiner switch_at", refiner.switch_at)
    if not isinstance(refiner.model, str | Path):
        raise InvalidArgumentError("the refiner is a model path: pass RefinerOptions(model=REFINER_PATH)")


def resolve_options(spec: FamilySpec, **user_values) -> GenerationOptions:
    """GenerationOptions from user values: None takes the family default; every value is checked.

    A sampler given by its A1111 name ("DPM++ 2M Karras") also sets the scheduler unless one is given.
    """
    values = {key: value for key, value in user_values.items() if value is not None}
    unknown = set(values) - set(GenerationOptions.__dataclass_fields__)
    if unknown:
        raise InvalidArgumentError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
    if "controlnets" in values:
        values["controlnets"] = tuple(values["controlnets"])
    if "fast" in values:
        values["fast"] = fast_modes_from(values["fast"])
    sampler, implied_scheduler = resolve_sampler(values.get("sampler", DEFAULT_SAMPLER))
    scheduler = values.get("scheduler", implied_scheduler or DEFAULT_SCHEDULER)
    if scheduler not in SCHEDULERS:
        raise InvalidArgumentError(f"unknown scheduler {scheduler!r}; use one of: {', '.join(SCHEDULERS)}")
    seed = values.get("seed", random_seed())
    options = GenerationOptions(
        prompt=values.get("prompt", ""),
        negative_prompt=values.get("negative_prompt", ""),
        width=values.get("width", spec.resolution),
        height=values.get("height", spec.resolution),
        steps=values.get("steps", DEFAULT_STEPS),
        cfg=float(values.get("cfg", DEFAULT_CFG)),
        sampler=sampler,
        scheduler=scheduler,
        seed=int(seed),
        sampler_options=tuple(sorted(dict(values.get("sampler_options", {})).items())),
        **{key: values[key] for key in _OPTIONAL_FIELDS if key in values},
    )
    check_options(options)
    return options


_OPTIONAL_FIELDS = (
    "batch_size",
    "clip_skip",
    "strength",
    "variation_seed",
    "variation_strength",
    "guidance_rescale",
    "hires",
    "refiner",
    "mode",
    "vae_tiling",
    "controlnets",
    "safety_checker",
    "fast",
)


def check_options(options: GenerationOptions) -> None:
    """Raise InvalidArgumentError, naming the fix, for any value out of range."""
    _check_size("width", options.width)
    _check_size("height", options.height)
    if not isinstance(options.steps, int) or options.steps < 1:
        raise InvalidArgumentError(f"steps must be 1 or more, got {options.steps}; 20 is a good start")
    if options.batch_size < 1:
        raise InvalidArgumentError(f"batch size must be 1 or more, got {options.batch_size}")
    if options.clip_skip < 1:
        raise InvalidArgumentError(f"clip skip must be 1 or more (1 = no skip), got {options.clip_skip}")
    if options.seed < 0 or (options.variation_seed is not None and options.variation_seed < 0):
        raise InvalidArgumentError(
            f"seeds must be 0 or more, got {options.seed}; leave seed=None for a random one"
        )
    _check_fraction("denoising strength", options.strength)
    _check_fraction("variation strength", options.variation_strength)
    _check_fraction("guidance rescale", options.guidance_rescale)
    if options.hires is not None:
        _check_hires(options.hires)
    if options.refiner is not None:
        _check_refiner(options.refiner)
    for index, unit in enumerate(options.controlnets):
        check_control_unit(unit, index)
    if options.safety_checker not in SAFETY_MODES:
        raise InvalidArgumentError(
            f"the safety checker setting must be one of {', '.join(SAFETY_MODES)}, "
            f"got {options.safety_checker!r}"
        )
    check_sampler_options(options.sampler, dict(options.sampler_options))
    check_fast_modes(options.fast)
