"""ControlNet options of the generation commands: `--controlnet` units, their control images and settings.

Every per-unit flag repeats in the order of `--controlnet`: given once it applies to every unit, else it
is given once per unit. `--from-png` supplies the units a PNG records (its models looked up by name),
but never their control images, which `--control-image` gives.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.errors import InvalidArgumentError
from lienzo.io.library import ModelLibrary
from lienzo.pipelines.control_units import CONTROL_MODES, RESIZE_MODES, ControlUnit
from lienzo.pipelines.images import load_image
from lienzo.pipelines.preprocessors import PREPROCESSORS

CONTROL_EPILOG = """ControlNet:
  lienzo generate "a house" --controlnet control_v11p_sd15_canny --control-image edges.png
  lienzo generate "a house" --controlnet canny.safetensors --control-image photo.png \\
      --control-preprocess canny --canny-low 50 --canny-high 150 --control-strength 0.8 --control-end 0.6
  lienzo generate "a room" --controlnet depth --control-image depth.png --controlnet canny \\
      --control-image edges.png --control-strength 1 --control-strength 0.5      # two units
"""
UNIT_FLAGS = {
    "control_strength": "--control-strength",
    "control_start": "--control-start",
    "control_end": "--control-end",
    "control_mode": "--control-mode",
    "control_resize": "--control-resize",
    "control_preprocess": "--control-preprocess",
}
"""Per-unit flags (argparse destination -> spelling)."""
MODE_IDS = {display: mode for mode, display in CONTROL_MODES.items()}
RESIZE_IDS = {display: resize for resize, display in RESIZE_MODES.items()}


def add_control_arguments(parser: argparse.ArgumentParser) -> None:
    """The ControlNet flags every generation command takes."""
    group = parser.add_argument_group("ControlNet (flags repeat in --controlnet order)")
    group.add_argument(
        "--controlnet",
        action="append",
        metavar="PATH|NAME",
        help="a ControlNet file, diffusers folder, or name in the models folder's controlnet/ (repeatable)",
    )
    group.add_argument("--control-image", action="append", type=Path, metavar="PNG", help="its control image")
    group.add_argument("--control-strength", action="append", type=float, metavar="W", help="weight (1.0)")
    group.add_argument(
        "--control-start", action="append", type=float, metavar="F", help="fraction of steps it starts at (0)"
    )
    group.add_argument(
        "--control-end", action="append", type=float, metavar="F", help="fraction of steps it ends at (1)"
    )
    group.add_argument(
        "--control-mode",
        action="append",
        choices=list(CONTROL_MODES),
        help="balanced (default), prompt, control",
    )
    group.add_argument(
        "--control-resize",
        action="append",
        choices=[mode.replace("_", "-") for mode in RESIZE_MODES],
        help="how the control image meets the size (default crop-and-resize)",
    )
    group.add_argument(
        "--control-preprocess",
        action="append",
        choices=list(PREPROCESSORS),
        help="make the control image from --control-image first (default none)",
    )
    group.add_argument("--canny-low", type=float, help="canny preprocessor's low threshold (100)")
    group.add_argument("--canny-high", type=float, help="canny preprocessor's high threshold (200)")
    group.add_argument("--scribble-threshold", type=float, help="scribble preprocessor's threshold (32)")


def _per_unit(args: argparse.Namespace, dest: str, count: int, stored: list) -> list:
    """A per-unit flag's values for `count` units: given once → for all, else one per unit; absent → the
    stored values (from --from-png)."""
    values = getattr(args, dest)
    if values is None:
        return stored
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise InvalidArgumentError(
            f"{UNIT_FLAGS[dest]} is given {len(values)} times for {count} --controlnet units; give it once "
            "(for every unit) or once per unit, in --controlnet order"
        )
    return values


def _preprocess_options(kind: str, args: argparse.Namespace, stored: dict) -> tuple[tuple[str, float], ...]:
    """The preprocessor flags that apply to `kind`, over the stored unit's thresholds (A and B)."""
    flags = {
        "canny": {
            "low_threshold": (args.canny_low, stored.get("threshold_a")),
            "high_threshold": (args.canny_high, stored.get("threshold_b")),
        },
        "scribble": {"threshold": (args.scribble_threshold, stored.get("threshold_a"))},
    }.get(kind, {})
    values = {name: flag if flag is not None else saved for name, (flag, saved) in flags.items()}
    return tuple((name, value) for name, value in values.items() if value is not None)


def control_units(args: argparse.Namespace, record: dict, library: ModelLibrary) -> list[ControlUnit]:
    """The ControlNet units of the flags (over --from-png's), models resolved and images readable; a
    control image without a ControlNet, or the reverse, is an error."""
    stored = (record.get("controlnets") or []) if args.controlnet is None else []
    models = args.controlnet or [unit["model"] for unit in stored]
    images = args.control_image or []
    if not models:
        if images or any(getattr(args, dest) is not None for dest in UNIT_FLAGS):
            raise InvalidArgumentError(
                "--control-image and the --control-* flags need --controlnet PATH|NAME"
            )
        return []
    if len(images) != len(models):
        source = "the PNG's" if args.controlnet is None else "--controlnet"
        raise InvalidArgumentError(
            f"{len(models)} ControlNet unit(s) from {source} need {len(models)} --control-image, got "
            f"{len(images)} (PNGs do not store control images)"
        )
    count = len(models)
    columns = {
        "control_strength": _per_unit(args, "control_strength", count, [u["weight"] for u in stored]),
        "control_start": _per_unit(args, "control_start", count, [u["guidance_start"] for u in stored]),
        "control_end": _per_unit(args, "control_end", count, [u["guidance_end"] for u in stored]),
        "control_mode": _per_unit(
            args, "control_mode", count, [MODE_IDS.get(u["control_mode"]) for u in stored]
        ),
        "control_resize": _per_unit(
            args, "control_resize", count, [RESIZE_IDS.get(u["resize_mode"]) for u in stored]
        ),
        "control_preprocess": _per_unit(args, "control_preprocess", count, [_module(u) for u in stored]),
    }
    units = []
    for index, (model, image) in enumerate(zip(models, images, strict=True)):
        values = {dest: column[index] for dest, column in columns.items() if index < len(column)}
        kind = values.get("control_preprocess") or "none"
        settings = {
            "strength": values.get("control_strength"),
            "start": values.get("control_start"),
            "end": values.get("control_end"),
            "mode": values.get("control_mode"),
            "resize_mode": None
            if values.get("control_resize") is None
            else values["control_resize"].replace("-", "_"),
        }
        units.append(
            ControlUnit(
                library.resolve("controlnet", model),
                load_image(image),
                preprocess=kind,
                preprocess_options=_preprocess_options(kind, args, stored[index] if stored else {}),
                **{key: value for key, value in settings.items() if value is not None},
            )
        )
    return units


def _module(unit: dict) -> str:
    """A stored unit's preprocessor as lienzo's kind ("none" for A1111 modules lienzo lacks)."""
    return unit["module"] if unit["module"] in PREPROCESSORS else "none"
