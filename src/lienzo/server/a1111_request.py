"""A1111's txt2img/img2img request bodies read into lienzo's generation settings (checked before queueing).

Field names and defaults follow A1111's StableDiffusionTxt2ImgProcessingAPI/Img2Img models. Fields lienzo
does not act on are accepted and logged (A1111 ignores unknown ones too); the settings are checked by
lienzo.pipelines.requests.validate_request, the same check the CLI runs.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from PIL import Image

from lienzo.diffusion import SAMPLERS, resolve_sampler
from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.options import HIRES_UPSCALERS, random_seed
from lienzo.pipelines.requests import validate_request
from lienzo.server.a1111_controlnet import controlnet_units
from lienzo.server.a1111_fast import request_fast_modes
from lienzo.server.files import check_image

log = logging.getLogger("lienzo.server")

SAMPLER_OPTION_FIELDS = ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise")
"""A1111's sampler extras; each goes only to a sampler that takes it (A1111's rule)."""
USED_FIELDS = {
    "prompt",
    "negative_prompt",
    "seed",
    "subseed",
    "subseed_strength",
    "sampler_name",
    "sampler_index",
    "scheduler",
    "batch_size",
    "n_iter",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "denoising_strength",
    "enable_hr",
    "hr_scale",
    "hr_upscaler",
    "hr_second_pass_steps",
    "override_settings",
    "override_settings_restore_afterwards",
    "send_images",
    "save_images",
    "init_images",
    "mask",
    "mask_blur",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
    "resize_mode",
    "include_init_images",
    "alwayson_scripts",
    *SAMPLER_OPTION_FIELDS,
}
DEFAULTS_IGNORED = {
    "styles": [],
    "restore_faces": False,
    "tiling": False,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "s_min_uncond": 0.0,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "refiner_checkpoint": None,
    "refiner_switch_at": None,
    "disable_extra_networks": False,
    "comments": None,
    "script_name": None,
    "script_args": [],
    "infotext": None,
    "force_task_id": None,
    "hr_checkpoint_name": None,
    "hr_sampler_name": None,
    "hr_scheduler": None,
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "image_cfg_scale": None,
    "initial_noise_multiplier": None,
    "latent_mask": None,
    "mask_blur_x": 4,
    "mask_blur_y": 4,
    "sampler_index": "Euler",
}
"""Fields accepted without effect; a value other than A1111's default is noted in the log."""
HIRES_UPSCALER_NAMES = {"latent": "latent", "latent (nearest-exact)": "latent-nearest", "lanczos": "image"}
INPAINT_FROM_ORIGINAL = 1
INPAINT_LATENT_NOISE = 2
MAX_N_ITER = 100
MAX_SIDE = 16384
MAX_SEED = 2**64 - 1
LIMITS = {
    "width": (8, MAX_SIDE),
    "height": (8, MAX_SIDE),
    "steps": (1, 10000),
    "batch_size": (1, 64),
    "n_iter": (1, MAX_N_ITER),
    "seed": (-1, MAX_SEED),
    "subseed": (-1, MAX_SEED),
    "hr_second_pass_steps": (0, 10000),
}
"""Bounds on integer fields, so one request cannot ask for unbounded work (ComfyUI's node limits)."""


@dataclass(frozen=True)
class A1111Request:
    """One txt2img/img2img request, read and checked: lienzo settings plus A1111's own extras."""

    mode: str
    settings: dict
    extras: dict
    n_iter: int
    checkpoint: str | None
    init_image: Image.Image | None = None
    mask: Image.Image | None = None


def field(body: dict, name: str, kind: type | tuple, default: Any = None) -> Any:
    """body[name] checked to be of `kind` (None/absent = default); bools are not numbers."""
    value = body.get(name, default)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidArgumentError(f"{name} must be {_kind_names(kinds)}, got {value!r}")
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds):
        raise InvalidArgumentError(f"{name} must be {_kind_names(kinds)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and name in LIMITS:
        low, high = LIMITS[name]
        if not low <= value <= high:
            raise InvalidArgumentError(f"{name} must lie in {low}..{high}, got {value}")
    return value


def _kind_names(kinds: tuple) -> str:
    return " or ".join(
        {
            int: "an integer",
            float: "a number",
            str: "a text",
            bool: "true or false",
            dict: "an object",
            list: "a list",
        }[kind]
        for kind in kinds
    )


def with_seed(body: dict) -> dict:
    """The body with seed -1 (random) replaced by a fixed seed, so a rerun after a restart is the same."""
    if not isinstance(body, dict):
        raise InvalidArgumentError("the request body must be a JSON object")
    seed, subseed = field(body, "seed", int, -1), field(body, "subseed", int, -1)
    return {
        **body,
        "seed": random_seed() if seed == -1 else seed,
        "subseed": random_seed() if subseed == -1 else subseed,
    }


def read_request(
    mode: str, body: dict, checkpoint: str | None, options: Mapping | None = None
) -> A1111Request:
    """Read and check a txt2img or img2img body (seed already fixed by with_seed); `options` are the
    server's /sdapi/v1/options, which `override_settings` override."""
    if not isinstance(body, dict):
        raise InvalidArgumentError("the request body must be a JSON object")
    note_unused(body)
    overrides = field(body, "override_settings", dict, {})
    clip_skip = overrides.get("CLIP_stop_at_last_layers", 1)
    checkpoint = overrides.get("sd_model_checkpoint", checkpoint)
    if not isinstance(clip_skip, int) or isinstance(clip_skip, bool):
        raise InvalidArgumentError(f"CLIP_stop_at_last_layers must be an integer, got {clip_skip!r}")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise InvalidArgumentError(f"sd_model_checkpoint must be a text, got {checkpoint!r}")
    sampler = field(body, "sampler_name", str, None) or "DPM++ 2M"
    sampler_id, _ = resolve_sampler(sampler)
    subseed_strength = field(body, "subseed_strength", float, 0.0)
    settings = {
        "prompt": field(body, "prompt", str, ""),
        "negative_prompt": field(body, "negative_prompt", str, ""),
        "seed": field(body, "seed", int),
        "sampler": sampler,
        "scheduler": _scheduler(field(body, "scheduler", str, None)),
        "batch_size": field(body, "batch_size", int, 1),
        "steps": field(body, "steps", int, 50),
        "cfg": field(body, "cfg_scale", float, 7.0),
        "width": field(body, "width", int, 512),
        "height": field(body, "height", int, 512),
        "clip_skip": clip_skip,
        "sampler_options": _sampler_options(body, sampler_id),
    }
    if subseed_strength > 0:
        settings["variation_seed"] = field(body, "subseed", int)
        settings["variation_strength"] = subseed_strength
    if mode == "txt2img" and field(body, "enable_hr", bool, False):
        settings["hires"] = _hires(body)
    settings["fast"] = request_fast_modes(mode, overrides, options or {}, "hires" in settings)
    init_image = mask = None
    extras: dict = {}
    if mode == "img2img":
        settings["strength"] = field(body, "denoising_strength", float, 0.75)
        images = field(body, "init_images", list, [])
        if not images:
            raise InvalidArgumentError("img2img needs init_images: a list holding one base64 image")
        init_image = decode_image(images[0], "init_images[0]").convert("RGB")
        if "mask" in body and body["mask"] is not None:
            mask, extras = _inpaint_fields(body, settings["strength"])
    units = controlnet_units(body, init_image, decode_image)
    if units:
        settings["controlnets"] = units
    validate_request(_lienzo_mode(mode, mask), settings, extras)
    return A1111Request(mode, settings, extras, field(body, "n_iter", int, 1), checkpoint, init_image, mask)


def note_unused(body: dict) -> None:
    """Log fields lienzo does not act on (unknown ones, or known ones set away from A1111's default)."""
    for name, value in body.items():
        if name in USED_FIELDS:
            continue
        if name not in DEFAULTS_IGNORED:
            log.info("A1111 request: ignoring unknown field %s", name)
        elif value not in (DEFAULTS_IGNORED[name], None):
            log.info("A1111 request: ignoring %s=%.200r (not supported)", name, value)


def _lienzo_mode(mode: str, mask: Image.Image | None) -> str:
    if mode == "txt2img":
        return "generate"
    return "inpaint" if mask is not None else "img2img"


def _scheduler(name: str | None) -> str | None:
    """A1111's scheduler labels ("Automatic", "Karras", "SGM Uniform") as lienzo's ids."""
    from lienzo.pipelines.metadata import SCHEDULE_IDS

    if name is None:
        return None
    return SCHEDULE_IDS.get(name.lower(), name.lower().replace(" ", "_"))


def _sampler_options(body: dict, sampler: str) -> dict:
    takes = SAMPLERS[sampler].options
    options = {}
    for name in SAMPLER_OPTION_FIELDS:
        value = field(body, name, float, None)
        if value is not None and name in takes:
            options[name] = value
    return options


def _hires(body: dict) -> dict:
    upscaler = field(body, "hr_upscaler", str, "Latent")
    if upscaler.lower() not in HIRES_UPSCALER_NAMES:
        raise InvalidArgumentError(
            f"unknown hr_upscaler {upscaler!r}; lienzo has Latent, Latent (nearest-exact) and Lanczos "
            f"({', '.join(HIRES_UPSCALERS)})"
        )
    steps = field(body, "hr_second_pass_steps", int, 0)
    scale = field(body, "hr_scale", float, 2.0)
    largest = max(field(body, "width", int, 512), field(body, "height", int, 512)) * scale
    if largest > MAX_SIDE:
        raise InvalidArgumentError(
            f"hr_scale {scale} makes the image {largest:.3g} pixels wide, over {MAX_SIDE}"
        )
    return {
        "scale": scale,
        "steps": steps or None,
        "strength": field(body, "denoising_strength", float, 0.7),
        "upscaler": HIRES_UPSCALER_NAMES[upscaler.lower()],
    }


def _inpaint_fields(body: dict, strength: float) -> tuple[Image.Image, dict]:
    """The mask (inverted for inpainting_mask_invert) and the inpaint extras."""
    mask = decode_image(body["mask"], "mask").convert("L")
    if field(body, "inpainting_mask_invert", int, 0):
        mask = mask.point(lambda value: 255 - value)
    fill = field(body, "inpainting_fill", int, INPAINT_FROM_ORIGINAL)
    if fill != INPAINT_FROM_ORIGINAL and not (fill == INPAINT_LATENT_NOISE and strength == 1):
        raise InvalidArgumentError(
            f"inpainting_fill {fill} is not supported: lienzo inpaints from the original (1), or from "
            "latent noise (2) at denoising_strength 1"
        )
    extras = {
        "mask_blur": field(body, "mask_blur", int, 4),
        "only_masked": bool(field(body, "inpaint_full_res", (bool, int), False)),
        "padding": field(body, "inpaint_full_res_padding", int, 32),
    }
    return mask, extras


def decode_image(text: Any, name: str) -> Image.Image:
    """A base64 image (a `data:image/...;base64,` prefix allowed), checked like an upload."""
    if not isinstance(text, str):
        raise InvalidArgumentError(f"{name} must be a base64 image text")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgumentError(f"{name} is not valid base64") from None
    return check_image(data)


def encode_image(image: Image.Image, format: str = "PNG") -> str:
    """An image as base64 text, the way A1111 returns images."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
