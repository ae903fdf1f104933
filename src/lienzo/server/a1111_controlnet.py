"""ControlNet units from A1111's `alwayson_scripts.controlnet.args` (the sd-webui-controlnet API format).

Each unit is an object with `enabled`, `module` (the preprocessor), `model` (`name [hash]`), `weight`,
`image` (base64, or `{"image": ...}`), `resize_mode`, `guidance_start`, `guidance_end`, `control_mode`,
`threshold_a` and `threshold_b`; modes may be given by name or by the extension's index. A unit without an
image takes the img2img init image, as the extension does.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.control_units import CONTROL_MODES, RESIZE_MODES, ControlUnit

log = logging.getLogger("lienzo.server")

MODULES = {
    "none": "none",
    "canny": "canny",
    "invert": "invert",
    "invert (from white bg & black line)": "invert",
    "scribble_xdog": "scribble",
    "depth": "depth",
    "depth_midas": "depth",
}
"""The extension's preprocessor names that lienzo has, as lienzo's preprocessor kinds."""
THRESHOLDS = {"canny": ("low_threshold", "high_threshold"), "scribble": ("threshold",)}
"""What the extension's threshold_a and threshold_b mean for each preprocessor."""
MODEL_HASH = re.compile(r"\s*\[[0-9a-fA-F]+\]$")
IGNORED = {"low_vram", "processor_res", "pixel_perfect", "guess_mode", "save_detected_map", "input_mode"}


def controlnet_units(body: dict, init_image: Image.Image | None, decode_image) -> tuple[ControlUnit, ...]:
    """The enabled units of a request's ControlNet script, checked; `decode_image(text, name)` reads one."""
    scripts = body.get("alwayson_scripts") or {}
    if not isinstance(scripts, dict):
        raise InvalidArgumentError("alwayson_scripts must be an object")
    for name in scripts:
        if name.lower() != "controlnet":
            log.info("A1111 request: ignoring the always-on script %s (not supported)", name)
    script = next((value for key, value in scripts.items() if key.lower() == "controlnet"), None)
    if script is None:
        return ()
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list):
        raise InvalidArgumentError('alwayson_scripts.controlnet needs "args": a list of unit objects')
    units = []
    for index, unit in enumerate(args):
        if not isinstance(unit, dict):
            raise InvalidArgumentError(f"ControlNet unit {index} must be an object")
        if unit.get("enabled", True):
            units.append(_unit(unit, index, init_image, decode_image))
    return tuple(units)


def _unit(unit: dict, index: int, init_image: Image.Image | None, decode_image) -> ControlUnit:
    where = f"ControlNet unit {index}"
    for name in sorted(set(unit) & IGNORED):
        log.info("A1111 request: %s: ignoring %s (not supported)", where, name)
    model = unit.get("model")
    if not isinstance(model, str) or not MODEL_HASH.sub("", model).strip():
        raise InvalidArgumentError(f"{where} needs a model: the name of a ControlNet in the models folder")
    module = str(unit.get("module", "none")).lower()
    if module not in MODULES:
        raise InvalidArgumentError(
            f"{where}: lienzo has no preprocessor {module!r}; use one of {', '.join(MODULES)}"
        )
    kind = MODULES[module]
    return ControlUnit(
        model=MODEL_HASH.sub("", model).strip(),
        image=_image(unit, where, init_image, decode_image),
        strength=_number(unit, "weight", 1.0, where),
        start=_number(unit, "guidance_start", 0.0, where),
        end=_number(unit, "guidance_end", 1.0, where),
        mode=_choice(unit.get("control_mode", 0), CONTROL_MODES, "control_mode", where),
        resize_mode=_choice(unit.get("resize_mode", 1), RESIZE_MODES, "resize_mode", where),
        preprocess=kind,
        preprocess_options=thresholds(unit, kind, where),
    )


def _image(unit: dict, where: str, init_image: Image.Image | None, decode_image) -> Image.Image:
    image = unit.get("image", unit.get("input_image"))
    if isinstance(image, dict):
        image = image.get("image")
    if image is None:
        if init_image is None:
            raise InvalidArgumentError(f"{where} needs an image (base64) in txt2img")
        return init_image
    return decode_image(image, f"{where} image").convert("RGB")


def _number(unit: dict, name: str, default: float, where: str) -> float:
    value = unit.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def _choice(value: Any, choices: dict[str, str], name: str, where: str) -> str:
    """A mode given by the extension's index, its display name or lienzo's id."""
    ids = list(choices)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(ids):
        return ids[value]
    for key, label in choices.items():
        if isinstance(value, str) and value.lower() in (key, label.lower()):
            return key
    raise InvalidArgumentError(
        f"{where}: unknown {name} {value!r}; use {', '.join(choices.values())} or their index"
    )


def thresholds(unit: dict, kind: str, where: str) -> tuple[tuple[str, float], ...]:
    """threshold_a/threshold_b as the preprocessor's options; -1 (the extension's unset) keeps its default."""
    names = THRESHOLDS.get(kind, ())
    given = [unit.get("threshold_a"), unit.get("threshold_b")]
    options = []
    for name, value in zip(names, given, strict=False):
        if value is None or value == -1:
            continue
        options.append((name, _number({name: value}, name, 0.0, where)))
    return tuple(options)
