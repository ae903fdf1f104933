"""A1111's PNG `parameters` text: write it from a generation record, read it back, save PNGs with it.

Layout (AUTOMATIC1111 stable-diffusion-webui): line 1.. the prompt, then `Negative prompt: ...`
(omitted when empty), then one line of `Key: value` pairs joined by ", ". A value holding a comma,
colon or newline is written as a JSON string. Records are the dicts of
`GenerationOptions.to_record` (keys in lienzo.pipelines.options.RECORD_KEYS).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from lienzo.diffusion.samplers import SAMPLERS, resolve_sampler
from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.output import write_png_atomically

PARAMETERS_KEY = "parameters"
WORKFLOW_KEY = "workflow"
NEGATIVE_PREFIX = "Negative prompt:"
SAMPLER_DISPLAY_NAMES = {sampler: info.a1111_name for sampler, info in SAMPLERS.items() if info.a1111_name}
SAMPLER_OPTION_NAMES = {
    "eta": "Eta",
    "s_noise": "Sigma noise",
    "s_churn": "Sigma churn",
    "s_tmin": "Sigma tmin",
    "s_tmax": "Sigma tmax",
    "r": "Sampler r",
    "order": "Sampler order",
}
"""Sampler options -> the `parameters` keys they are written under (A1111's where it has one)."""
SCHEDULE_DISPLAY_NAMES = {
    "normal": "Normal",
    "karras": "Karras",
    "exponential": "Exponential",
    "simple": "Simple",
    "sgm_uniform": "SGM Uniform",
    "ddim_uniform": "DDIM",
    "beta": "Beta",
}
SCHEDULE_IDS = {display.lower(): schedule for schedule, display in SCHEDULE_DISPLAY_NAMES.items()}
SCHEDULE_IDS.update({"uniform": "normal", "automatic": "normal"})
"""A1111 "Schedule type" values -> lienzo scheduler ids ("Uniform"/"Automatic": the model's own spacing)."""
UPSCALER_DISPLAY_NAMES = {"latent": "Latent", "latent-nearest": "Latent (nearest-exact)", "image": "Lanczos"}
UPSCALER_IDS = {display.lower(): upscaler for upscaler, display in UPSCALER_DISPLAY_NAMES.items()}
PARAMETER_PAIR = re.compile(r'\s*(\w[\w \-/()]*?):\s*("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)')
"""One `Key: value` pair of the last line; a quoted value is a JSON string."""
IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
CONTROLNET_FIELD = re.compile(r"^ControlNet (\d+)$")
MIN_PARAMETER_PAIRS = 3
"""A last line with fewer pairs is part of the prompt (A1111's own rule)."""


def lienzo_version() -> str:
    """The running lienzo version, as written in the `Version` field."""
    import lienzo

    return f"lienzo {lienzo.__version__}"


def format_number(value: float | int) -> str:
    """A number the way A1111 shows it: whole floats without ".0" (7.0 -> "7"), others exactly (repr)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def quote(value: object) -> str:
    """A value as A1111 writes it: as is, or as a JSON string when it holds ',', ':' or a newline."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(mark in text for mark in ",:\n") else text


def name_hashes(hashes: dict[str, str]) -> str | None:
    """A1111's "Lora hashes" / "TI hashes" value, `name: hash, name2: hash2`, or None when empty."""
    return ", ".join(f"{name}: {digest}" for name, digest in hashes.items()) or None


def parse_name_hashes(text: str) -> dict[str, str]:
    """{name: hash} from A1111's "Lora hashes" or "TI hashes" value, `name: hash, name2: hash2`."""
    pairs = (item.rpartition(":") for item in text.split(",") if ":" in item)
    return {name.strip(): digest.strip() for name, _, digest in pairs}


def model_field(name: str | None, model_hash: str | None) -> str | None:
    """A1111's "Refiner" value: `name [hash]`, or whichever part is known."""
    if name and model_hash:
        return f"{name} [{model_hash}]"
    return name or model_hash


def parameter_fields(record: dict) -> dict[str, object]:
    """The `Key: value` fields of a record in A1111's order; None means "leave out"."""
    hires, refiner, mask = record.get("hires"), record.get("refiner"), record.get("mask")
    loras = record.get("loras") or {}
    controlnets = record.get("controlnets") or []
    only_masked = bool(mask and mask["only_masked"])
    width, height = record.get("width"), record.get("height")
    mode = record.get("mode", "txt2img")
    strength = hires["strength"] if hires else (record.get("strength") if mode != "txt2img" else None)
    variation_strength = record.get("variation_strength") or 0
    clip_skip = record.get("clip_skip") or 1
    sampler, scheduler = record.get("sampler"), record.get("scheduler")
    return {
        "Steps": record.get("steps"),
        "Sampler": SAMPLER_DISPLAY_NAMES.get(sampler, sampler),
        "Schedule type": SCHEDULE_DISPLAY_NAMES.get(scheduler, scheduler),
        "CFG scale": record.get("cfg"),
        "Seed": record.get("seed"),
        "Size": f"{width}x{height}" if width and height else None,
        "Model hash": record.get("model_hash"),
        "Model": record.get("model"),
        "Denoising strength": strength,
        "Mask blur": mask["blur"] if mask else None,
        "Inpaint area": "Only masked" if only_masked else None,
        "Masked area padding": mask["padding"] if only_masked else None,
        "Clip skip": clip_skip if clip_skip > 1 else None,
        "Variation seed": record.get("variation_seed") if variation_strength > 0 else None,
        "Variation seed strength": variation_strength if variation_strength > 0 else None,
        "Guidance rescale": record.get("guidance_rescale") or None,
        **{
            SAMPLER_OPTION_NAMES.get(key, key): value
            for key, value in (record.get("sampler_options") or {}).items()
        },
        "Hires upscale": hires["scale"] if hires else None,
        "Hires steps": hires.get("steps") if hires else None,
        "Hires upscaler": UPSCALER_DISPLAY_NAMES.get(hires["upscaler"], hires["upscaler"]) if hires else None,
        "Refiner": model_field(refiner.get("model"), refiner.get("model_hash")) if refiner else None,
        "Refiner switch at": refiner["switch_at"] if refiner else None,
        **{f"ControlNet {index}": control_unit_text(unit) for index, unit in enumerate(controlnets)},
        "Lora hashes": name_hashes(loras),
        "Hypernet hashes": name_hashes(record.get("hypernetworks") or {}),
        "VAE": record.get("vae"),
        "TI hashes": name_hashes(record.get("embeddings") or {}),
        "Safety checker": record.get("safety_checker"),
        **fast_mode_fields(record.get("fast") or {}),
        "Version": lienzo_version(),
    }


FAST_MODE_FIELDS = {
    "cfg_cutoff": "CFG cutoff",
    "deepcache": "DeepCache interval",
    "tome": "Token merging ratio",
}
"""Fast modes -> their `parameters` keys (A1111's "Token merging ratio"), written when not neutral."""
FAST_MODE_NEUTRAL = {"cfg_cutoff": 1.0, "deepcache": 1, "tome": 0.0}
FAST_MODE_KINDS = {"cfg_cutoff": float, "deepcache": int, "tome": float}


def fast_mode_fields(fast: dict) -> dict[str, object]:
    """The `parameters` fields of the fast modes that are on."""
    values = {key: fast.get(key, neutral) for key, neutral in FAST_MODE_NEUTRAL.items()}
    return {
        name: None if values[key] == FAST_MODE_NEUTRAL[key] else values[key]
        for key, name in FAST_MODE_FIELDS.items()
    }


def _fast_modes(fields: dict[str, str]) -> dict:
    """The record's `fast` dict from the fast-mode fields (neutral values where absent)."""
    values = {key: _number(fields, name, FAST_MODE_KINDS[key]) for key, name in FAST_MODE_FIELDS.items()}
    return {key: FAST_MODE_NEUTRAL[key] if value is None else value for key, value in values.items()}


CONTROL_PROCESSOR_RESOLUTION = 512
"""A1111's ControlNet "Processor Res" default, written for every unit."""


def control_unit_text(unit: dict) -> str:
    """A ControlNet unit as A1111's ControlNet extension writes it: `Module: canny, Model: name [hash],
    Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100.0, ...` (thresholds
    only where the preprocessor has them)."""
    values = {
        "Module": unit["module"],
        "Model": model_field(unit["model"], unit.get("model_hash")),
        "Weight": float(unit["weight"]),
        "Resize Mode": unit["resize_mode"],
        "Processor Res": CONTROL_PROCESSOR_RESOLUTION,
        "Threshold A": None if unit.get("threshold_a") is None else float(unit["threshold_a"]),
        "Threshold B": None if unit.get("threshold_b") is None else float(unit["threshold_b"]),
        "Guidance Start": float(unit["guidance_start"]),
        "Guidance End": float(unit["guidance_end"]),
        "Pixel Perfect": False,
        "Control Mode": unit["control_mode"],
    }
    return ", ".join(f"{key}: {value}" for key, value in values.items() if value is not None)


def parse_control_unit(text: str) -> dict:
    """A ControlNet unit's record from A1111's `ControlNet N` value (inverse of control_unit_text)."""
    pairs = dict(item.strip().partition(": ")[::2] for item in text.split(","))
    try:
        name, model_hash = _model_and_hash(pairs["Model"])
        thresholds = [pairs.get(key) for key in ("Threshold A", "Threshold B")]
        return {
            "module": pairs.get("Module", "none"),
            "model": name,
            "model_hash": model_hash,
            "weight": float(pairs.get("Weight", 1.0)),
            "resize_mode": pairs.get("Resize Mode", "Crop and Resize"),
            "guidance_start": float(pairs.get("Guidance Start", 0.0)),
            "guidance_end": float(pairs.get("Guidance End", 1.0)),
            "control_mode": pairs.get("Control Mode", "Balanced"),
            "threshold_a": None if thresholds[0] is None else float(thresholds[0]),
            "threshold_b": None if thresholds[1] is None else float(thresholds[1]),
        }
    except (KeyError, ValueError) as error:
        raise InvalidArgumentError(
            f"the parameters text has an unreadable ControlNet unit {text!r}; fix or remove that field"
        ) from error


def _controlnets(fields: dict[str, str]) -> list[dict]:
    """The `ControlNet 0`, `ControlNet 1`, ... units in index order (removed from `fields`)."""
    keys = sorted((int(m[1]), key) for key in fields if (m := CONTROLNET_FIELD.match(key)))
    return [parse_control_unit(fields.pop(key)) for _, key in keys]


def format_parameters(record: dict) -> str:
    """A1111's `parameters` text for a generation record (prompt, negative prompt, settings line)."""
    values = {key: value for key, value in parameter_fields(record).items() if value is not None}
    settings = ", ".join(
        f"{key}: {format_number(value) if isinstance(value, int | float) else quote(value)}"
        for key, value in values.items()
    )
    negative = record.get("negative_prompt") or ""
    negative_line = f"\n{NEGATIVE_PREFIX} {negative}" if negative else ""
    return f"{record.get('prompt') or ''}{negative_line}\n{settings}".strip()


def unquote(value: str) -> str:
    """A field value without its JSON quotes (left as is when it is not a valid JSON string)."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def split_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, {key: raw value}) of a parameters text; prompts may span lines."""
    *lines, last = text.replace("\r\n", "\n").strip().split("\n")
    pairs = PARAMETER_PAIR.findall(last)
    if len(pairs) < MIN_PARAMETER_PAIRS:
        lines, pairs = [*lines, last], []
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if negative_lines or line.startswith(NEGATIVE_PREFIX):
            negative_lines.append(line.removeprefix(NEGATIVE_PREFIX).strip() if not negative_lines else line)
        else:
            prompt_lines.append(line)
    fields = {key.strip(): unquote(value.strip()) for key, value in pairs}
    return "\n".join(prompt_lines).strip(), "\n".join(negative_lines).strip(), fields


def _number(fields: dict[str, str], key: str, kind: type):
    """fields[key] as int or float (None when absent); a malformed number names the field to fix."""
    if key not in fields:
        return None
    try:
        return kind(fields.pop(key))
    except ValueError as error:
        raise InvalidArgumentError(
            f"the parameters text has an unreadable {key!r} value; fix or remove that field"
        ) from error


def _model_and_hash(value: str) -> tuple[str, str | None]:
    """Split A1111's `name [hash]` into its parts."""
    match = re.fullmatch(r"(.*?)\s*\[([0-9a-fA-F]+)\]", value)
    return (match.group(1), match.group(2)) if match else (value, None)


def _sampler_and_scheduler(fields: dict[str, str]) -> tuple[str | None, str | None]:
    """Sampler id and scheduler id; old files write "DPM++ 2M Karras" without a Schedule type."""
    display, schedule = fields.pop("Sampler", None), fields.pop("Schedule type", None)
    if display is None:
        return None, SCHEDULE_IDS.get(schedule.lower(), schedule) if schedule else None
    try:
        sampler, implied = resolve_sampler(display)
    except InvalidArgumentError:
        sampler, implied = display, None
    if schedule is not None:
        return sampler, SCHEDULE_IDS.get(schedule.lower(), schedule.lower())
    return sampler, implied or "normal"


def _hires(fields: dict[str, str], strength: float | None, size: tuple[int, int] | None) -> dict | None:
    """The record's `hires` dict from A1111's Hires fields (None without "Hires upscale")."""
    scale = _number(fields, "Hires upscale", float)
    if scale is None:
        return None
    upscaler = fields.pop("Hires upscaler", "Latent")
    width, height = (int(side * scale) // 8 * 8 for side in size) if size else (None, None)
    return {
        "scale": scale,
        "steps": _number(fields, "Hires steps", int),
        "strength": 0.5 if strength is None else strength,
        "upscaler": UPSCALER_IDS.get(upscaler.lower(), upscaler),
        "width": width,
        "height": height,
    }


def _mask(fields: dict[str, str]) -> dict | None:
    """Inpainting's mask settings from "Mask blur", "Inpaint area" and "Masked area padding"."""
    if "Mask blur" not in fields:
        return None
    only_masked = fields.pop("Inpaint area", "Whole picture") == "Only masked"
    padding = _number(fields, "Masked area padding", int)
    return {
        "blur": _number(fields, "Mask blur", float),
        "only_masked": only_masked,
        "padding": 32 if padding is None else padding,
    }


def parse_parameters(text: str) -> dict:
    """A generation record from A1111's `parameters` text (inverse of `format_parameters`).

    Absent settings are None; fields lienzo does not use are kept as raw strings under "extra".
    A "Denoising strength" without hires fix marks an img2img-style run (mode "img2img"). An old A1111
    "Hypernet" field becomes a `<hypernet:name:strength>` tag at the end of the prompt, as A1111 reads it.
    """
    prompt, negative, fields = split_parameters(text)
    if "Hypernet" in fields:
        prompt += f"<hypernet:{fields.pop('Hypernet')}:{fields.pop('Hypernet strength', '1.0')}>"
    sampler, scheduler = _sampler_and_scheduler(fields)
    width = height = None
    if (size := IMAGE_SIZE.match(fields.pop("Size", ""))) is not None:
        width, height = int(size.group(1)), int(size.group(2))
    strength = _number(fields, "Denoising strength", float)
    hires = _hires(fields, strength, (width, height) if width else None)
    refiner = None
    if "Refiner" in fields:
        name, refiner_hash = _model_and_hash(fields.pop("Refiner"))
        switch_at = _number(fields, "Refiner switch at", float)
        refiner = {
            "model": name,
            "model_hash": refiner_hash,
            "switch_at": 0.8 if switch_at is None else switch_at,
        }
    img2img_style = strength is not None and hires is None
    mask = _mask(fields)
    return {
        "mode": "inpaint" if mask else "img2img" if img2img_style else "txt2img",
        "prompt": prompt,
        "negative_prompt": negative,
        "steps": _number(fields, "Steps", int),
        "sampler": sampler,
        "scheduler": scheduler,
        "cfg": _number(fields, "CFG scale", float),
        "seed": _number(fields, "Seed", int),
        "width": width,
        "height": height,
        "batch_size": 1,
        "batch_index": 0,
        "clip_skip": _number(fields, "Clip skip", int) or 1,
        "strength": strength if img2img_style else 1.0,
        "variation_seed": _number(fields, "Variation seed", int),
        "variation_strength": _number(fields, "Variation seed strength", float) or 0.0,
        "guidance_rescale": _number(fields, "Guidance rescale", float) or 0.0,
        "sampler_options": {
            key: value
            for key, name in SAMPLER_OPTION_NAMES.items()
            if (value := _number(fields, name, float)) is not None
        },
        "hires": hires,
        "refiner": refiner,
        "mask": mask,
        "loras": parse_name_hashes(fields.pop("Lora hashes", "")),
        "hypernetworks": parse_name_hashes(fields.pop("Hypernet hashes", "")),
        "vae": fields.pop("VAE", None),
        "embeddings": parse_name_hashes(fields.pop("TI hashes", "")),
        "model": fields.pop("Model", None),
        "model_hash": fields.pop("Model hash", None),
        "family": None,
        "safety_checker": fields.pop("Safety checker", None),
        "fast": _fast_modes(fields),
        "controlnets": _controlnets(fields),
        "extra": fields,
    }


def save_png(image: Image.Image, path: str | Path, record: dict, workflow: dict | None = None) -> Path:
    """Write `image` as PNG with the `parameters` tEXt chunk (and a `workflow` JSON chunk), atomically."""
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(record))
    if workflow is not None:
        info.add_text(WORKFLOW_KEY, json.dumps(workflow))
    return write_png_atomically(image, Path(path), info)


def read_parameters(path: str | Path) -> str:
    """The `parameters` text of a PNG file; a missing file or chunk raises InvalidArgumentError."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            text = image.info.get(PARAMETERS_KEY)
    except FileNotFoundError as error:
        raise InvalidArgumentError(f"{path} does not exist; give the PNG whose settings to reuse") from error
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidArgumentError(
            f"cannot read {path} as an image; give a PNG written by lienzo or A1111"
        ) from error
    if not text:
        raise InvalidArgumentError(
            f"{path} carries no generation parameters; give a PNG written by lienzo or A1111"
        )
    return text
