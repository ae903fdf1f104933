"""Prompt-adherence evaluation in the shapes world: fixed prompt sets, accuracy tables, contact sheets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lienzo.errors import InvalidArgumentError
from lienzo.worlds.scorer import ScoreResult, parse_prompt, score
from lienzo.worlds.shapes import COLOURS, HELD_OUT_PAIRS, Scene, caption, sample_scene

CATEGORIES = ("single", "double", "held_out")
ATTRIBUTES = ("background", "count", "colour", "shape", "size", "position")


def _held_out_scene(rng: np.random.Generator) -> Scene:
    scene = sample_scene(rng, objects=1, allow_held_out=True)
    colour, shape = sorted(HELD_OUT_PAIRS)[rng.integers(len(HELD_OUT_PAIRS))]
    background = scene.background
    if background == colour:
        others = [name for name in COLOURS if name != colour]
        background = others[rng.integers(len(others))]
    return Scene(background, (replace(scene.objects[0], colour=colour, shape=shape),))


def evaluation_prompts(n: int, seed: int = 0, kind: str = "single") -> list[str]:
    """`n` full captions of one kind: "single" / "double" objects from the training distribution, or
    "held_out": one object whose colour-shape pair never appears in training."""
    if kind not in CATEGORIES:
        raise InvalidArgumentError(f"unknown prompt kind {kind!r}; use one of {', '.join(CATEGORIES)}")
    rng = np.random.default_rng([seed, CATEGORIES.index(kind)])
    if kind == "held_out":
        return [caption(_held_out_scene(rng)) for _ in range(n)]
    objects = 1 if kind == "single" else 2
    return [caption(sample_scene(rng, objects=objects)) for _ in range(n)]


def prompt_category(prompt: str) -> str:
    """ "held_out" when the prompt names a held-out colour-shape pair, else "single" or "double"."""
    expected = parse_prompt(prompt)
    if any((obj.colour, obj.shape) in HELD_OUT_PAIRS for obj in expected.objects):
        return "held_out"
    return "single" if len(expected.objects) == 1 else "double"


@dataclass(frozen=True)
class EvalItem:
    """One generated image's verdict: its prompt, seed, category and score."""

    prompt: str
    seed: int
    category: str
    result: ScoreResult


@dataclass(frozen=True)
class EvalReport:
    """Scores of a prompt set with the generated images, summarised per category and attribute."""

    items: tuple[EvalItem, ...]
    images: tuple[Image.Image, ...]

    def select(self, category: str | None = None) -> list[EvalItem]:
        """The items of one category, or all of them."""
        return [item for item in self.items if category in (None, item.category)]

    def accuracy(self, category: str | None = None) -> float:
        """Fraction of prompts fully matched (NaN when the category is empty)."""
        items = self.select(category)
        return sum(item.result.matched for item in items) / len(items) if items else float("nan")

    def attribute_accuracy(self, category: str | None = None) -> dict[str, float]:
        """Per-attribute fraction correct; size and position count only objects whose prompt names them."""
        hits = {name: [] for name in ATTRIBUTES}
        for item in self.select(category):
            hits["background"].append(item.result.background)
            hits["count"].append(item.result.count)
            for obj in item.result.objects:
                for name in ("colour", "shape", "size", "position"):
                    value = getattr(obj, name)
                    if value is not None:
                        hits[name].append(value)
        return {name: sum(values) / len(values) if values else float("nan") for name, values in hits.items()}

    def table(self) -> str:
        """A plain-text accuracy table: one row per category present, then all prompts together."""
        header = ["category", "prompts", "matched", *ATTRIBUTES]
        rows = []
        categories = [name for name in CATEGORIES if self.select(name)]
        for name in [*categories, None]:
            attributes = self.attribute_accuracy(name)
            rows.append(
                [name or "all", str(len(self.select(name))), f"{self.accuracy(name):.1%}"]
                + [f"{attributes[attribute]:.1%}" for attribute in ATTRIBUTES]
            )
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
        ]
        head = "  ".join(cell.rjust(width) for cell, width in zip(header, widths, strict=True))
        return "\n".join([head, *lines])


def evaluate(
    generate_fn: Callable[[str, int], Image.Image], prompts: Sequence[str], seeds: Sequence[int]
) -> EvalReport:
    """Generate one image per (prompt, seed) with `generate_fn` and score each against its prompt."""
    if len(prompts) != len(seeds):
        raise InvalidArgumentError(
            f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt"
        )
    items, images = [], []
    for prompt, seed in zip(prompts, seeds, strict=True):
        image = generate_fn(prompt, seed)
        items.append(EvalItem(prompt, seed, prompt_category(prompt), score(prompt, image)))
        images.append(image)
    return EvalReport(tuple(items), tuple(images))


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _draw_mark(draw: ImageDraw.ImageDraw, x: int, y: int, matched: bool) -> None:
    draw.rectangle((x, y, x + 17, y + 17), fill=(255, 255, 255), outline=(0, 0, 0))
    if matched:
        draw.line([(x + 3, y + 9), (x + 7, y + 14), (x + 14, y + 3)], fill=(20, 150, 40), width=3)
    else:
        draw.line([(x + 4, y + 4), (x + 13, y + 13)], fill=(200, 30, 30), width=3)
        draw.line([(x + 4, y + 13), (x + 13, y + 4)], fill=(200, 30, 30), width=3)


def contact_sheet(
    images: Sequence[Image.Image], prompts: Sequence[str], matches: Sequence[bool], *, columns: int = 8
) -> Image.Image:
    """A grid of images, each with its prompt underneath and a check (matched) or cross mark."""
    if not images or not len(images) == len(prompts) == len(matches):
        raise InvalidArgumentError(
            "a contact sheet needs one prompt and one verdict per image, and some images"
        )
    tile = max(max(image.size) for image in images)
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(measure, prompt, font, tile - 4) for prompt in prompts]
    line_height = int(font.getbbox("Ag")[3]) + 2
    cell_height = tile + 4 + line_height * max(len(lines) for lines in wrapped)
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (tile + 4), rows * cell_height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for index, (image, lines, matched) in enumerate(zip(images, wrapped, matches, strict=True)):
        x, y = (index % columns) * (tile + 4) + 2, (index // columns) * cell_height
        sheet.paste(image.convert("RGB").resize((tile, tile)), (x, y + 2))
        _draw_mark(draw, x + 2, y + 4, matched)
        for number, line in enumerate(lines):
            draw.text((x, y + tile + 4 + number * line_height), line, fill=(0, 0, 0), font=font)
    return sheet
