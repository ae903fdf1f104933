"""Axes of the parameter grid (A1111's X/Y/Z plot): `NAME=V1,V2,...`, parsed and checked before any image.

| axis | values | sets |
|---|---|---|
| `seed` | integers, ranges | the seed |
| `sampler` | sampler ids or A1111 names | the sampler |
| `scheduler` | schedule ids | the sigma schedule |
| `steps` | integers >= 1, ranges | the steps |
| `cfg` | numbers, ranges | the CFG scale |
| `size` | `WxH` (or `N` for a square) | width and height |
| `denoising` (`strength`) | numbers in [0, 1], ranges | img2img strength, or the hires pass's |
| `clip_skip` | integers >= 1 | clip skip |
| `model` (`checkpoint`) | checkpoint names or paths | the model |
| `lora:NAME` | numbers, ranges | the weight of `<lora:NAME:w>` added to the prompt |
| `prompt_sr` | texts | the first text, found in the prompt, replaced by each (A1111's Prompt S/R) |
| `controlnet_strength` | numbers from 0, ranges | the strength of every ControlNet unit given |

Numeric axes take A1111's ranges: `1-5` (every integer), `10-30 (+10)` (a step) and `0-1 [5]` (a count).
Values split on commas; `prompt_sr` values may be quoted ("a, b",c) as in a CSV line.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lienzo.diffusion import SAMPLERS, SCHEDULERS, resolve_sampler
from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.options import MAX_SEED

NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
STEP_RANGE = re.compile(rf"^\s*({NUMBER})\s*-\s*({NUMBER})\s*\(\s*([+-]\s*{NUMBER})\s*\)\s*$")
COUNT_RANGE = re.compile(rf"^\s*({NUMBER})\s*-\s*({NUMBER})\s*\[\s*(\d+)\s*\]\s*$")
PLAIN_RANGE = re.compile(rf"^\s*({NUMBER})\s*-\s*({NUMBER})\s*$")
MAX_AXIS_VALUES = 256


@dataclass(frozen=True)
class Axis:
    """One grid axis: its kind (`seed`, `cfg`, `lora`, ...), the LoRA name for `lora`, the parsed values
    and their labels."""

    kind: str
    values: tuple[Any, ...]
    labels: tuple[str, ...]
    target: str | None = None

    @property
    def title(self) -> str:
        """The axis title drawn on the grid."""
        return f"LoRA {self.target}" if self.kind == "lora" else AXIS_TITLES[self.kind]


def _fail(flag: str, kind: str, value: str, wanted: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"{flag} {kind}: {value!r} is not {wanted}; fix that value")


def _expand_range(text: str, integer: bool) -> list[float] | None:
    """The values of an A1111 range (`a-b`, `a-b (+s)`, `a-b [n]`), or None when `text` is no range."""
    convert = int if integer else float
    if match := STEP_RANGE.match(text):
        start, end, step = (float(group.replace(" ", "")) for group in match.groups())
        if step == 0 or (end - start) * step < 0:
            return []
        count = int((end - start) / step + 1e-9) + 1
        values = [start + index * step for index in range(min(count, MAX_AXIS_VALUES + 1))]
    elif match := COUNT_RANGE.match(text):
        start, end, count = float(match[1]), float(match[2]), int(match[3])
        if count < 1:
            return []
        values = [start + (end - start) * index / max(count - 1, 1) for index in range(count)]
    elif integer and (match := PLAIN_RANGE.match(text)):
        start, end = int(float(match[1])), int(float(match[2]))
        values = list(range(start, end + (1 if end >= start else -1), 1 if end >= start else -1))
    else:
        return None
    return [convert(round(value)) if integer else round(value, 6) for value in values]


def _numbers(
    integer: bool, low: float | None = None, high: float | None = None, wanted: str = ""
) -> Callable:
    def parse(items: list[str], flag: str, kind: str) -> list:
        values = []
        for item in items:
            expanded = _expand_range(item, integer)
            if expanded is None:
                try:
                    number = float(item)
                except ValueError:
                    raise _fail(flag, kind, item, wanted) from None
                if integer and number != int(number):
                    raise _fail(flag, kind, item, wanted)
                expanded = [int(number) if integer else number]
            if not expanded:
                raise _fail(flag, kind, item, f"a range with values ({wanted})")
            for value in expanded:
                if (low is not None and value < low) or (high is not None and value > high):
                    raise _fail(flag, kind, str(value), wanted)
            values += expanded
        return values

    return parse


def _samplers(items: list[str], flag: str, kind: str) -> list:
    for item in items:
        try:
            resolve_sampler(item)
        except InvalidArgumentError:
            raise _fail(flag, kind, item, f"a sampler id ({', '.join(SAMPLERS)}) or A1111 name") from None
    return items


def _schedulers(items: list[str], flag: str, kind: str) -> list:
    for item in items:
        if item not in SCHEDULERS:
            raise _fail(flag, kind, item, f"a schedule ({', '.join(SCHEDULERS)})")
    return items


def _sizes(items: list[str], flag: str, kind: str) -> list:
    sizes = []
    for item in items:
        parts = item.lower().split("x")
        if len(parts) not in (1, 2) or not all(part.strip().isdigit() for part in parts):
            raise _fail(flag, kind, item, "a size like 512x768")
        width, height = (int(part) for part in (parts * 2)[:2])
        if width < 8 or height < 8 or width % 8 or height % 8:
            raise _fail(flag, kind, item, "a size in positive multiples of 8")
        sizes.append((width, height))
    return sizes


def _texts(items: list[str], flag: str, kind: str) -> list:
    if any(not item for item in items):
        raise _fail(flag, kind, "", "a name")
    return items


AXIS_PARSERS: dict[str, Callable[[list[str], str, str], list]] = {
    "seed": _numbers(True, 0, MAX_SEED, "a seed (an integer from 0)"),
    "sampler": _samplers,
    "scheduler": _schedulers,
    "steps": _numbers(True, 1, None, "a step count (an integer from 1)"),
    "cfg": _numbers(False, 0, None, "a CFG scale (a number from 0)"),
    "size": _sizes,
    "denoising": _numbers(False, 0, 1, "a denoising strength between 0 and 1"),
    "clip_skip": _numbers(True, 1, None, "a clip skip (an integer from 1)"),
    "model": _texts,
    "lora": _numbers(False, None, None, "a LoRA weight (a number)"),
    "prompt_sr": _texts,
    "controlnet_strength": _numbers(False, 0, None, "a ControlNet strength (a number from 0)"),
}
AXIS_TITLES = {
    "seed": "Seed",
    "sampler": "Sampler",
    "scheduler": "Schedule type",
    "steps": "Steps",
    "cfg": "CFG scale",
    "size": "Size",
    "denoising": "Denoising",
    "clip_skip": "Clip skip",
    "model": "Checkpoint",
    "prompt_sr": "Prompt S/R",
    "controlnet_strength": "ControlNet strength",
}
ALIASES = {"strength": "denoising", "checkpoint": "model", "cfg_scale": "cfg", "clip-skip": "clip_skip"}


def _label(kind: str, value: Any) -> str:
    if kind == "size":
        return f"{value[0]}x{value[1]}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse_axis(text: str, flag: str = "--x") -> Axis:
    """An Axis from `NAME=V1,V2,...` (see the module docstring); a bad name or value raises
    InvalidArgumentError naming the flag, the axis and the value."""
    name, separator, values_text = text.partition("=")
    name = name.strip().lower()
    target = None
    if name.startswith(("lora:", "lyco:")):
        name, target = "lora", name.split(":", 1)[1].strip()
        if not target:
            raise InvalidArgumentError(f"{flag} {text!r}: name the LoRA, e.g. lora:my_style=0,0.5,1")
    name = ALIASES.get(name, name)
    if not separator or name not in AXIS_PARSERS:
        known = ", ".join(kind for kind in AXIS_PARSERS if kind != "lora") + ", lora:NAME"
        raise InvalidArgumentError(
            f"{flag} {text!r} is not an axis: write NAME=V1,V2,... with NAME one of {known}"
        )
    items = [item.strip() for row in csv.reader([values_text], skipinitialspace=True) for item in row]
    if not items or items == [""]:
        raise InvalidArgumentError(f"{flag} {name}: give at least one value after {name}=")
    values = AXIS_PARSERS[name](items, flag, name)
    if len(values) > MAX_AXIS_VALUES:
        raise InvalidArgumentError(f"{flag} {name}: {len(values)} values; use at most {MAX_AXIS_VALUES}")
    labels = tuple(_label(name, value) for value in values)
    return Axis(name, tuple(values), labels, target)
