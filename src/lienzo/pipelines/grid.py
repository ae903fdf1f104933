"""Parameter grids (A1111's X/Y/Z plot): one image per combination of axis values, drawn as labelled grids.

```
axes (grid_axes.parse_axis) ─► plan_grid: every cell's prompt, settings and model, all checked ─┐
pipe (+ the models a model axis names) ─► generate / img2img per cell ─► images + records ─┴─► a grid per Z
```
Nothing is generated until every cell is planned and checked, so a value that does not fit fails first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from lienzo.errors import InvalidArgumentError
from lienzo.io.atomic import atomic_path
from lienzo.pipelines.grid_axes import Axis, parse_axis
from lienzo.pipelines.images import ImageInput, load_image
from lienzo.pipelines.metadata import save_png
from lienzo.pipelines.output import check_writable_folder
from lienzo.pipelines.pipeline import load
from lienzo.pipelines.requests import validate_request

FONT_SIZE = 14
PADDING = 6
GRID_BACKGROUND = (255, 255, 255)
GRID_INK = (20, 20, 20)
IMAGES_FOLDER = "images"


@dataclass(frozen=True)
class GridCell:
    """One image of the grid: its (x, y, z) indices, prompt, generation settings and model (None: the
    given pipeline's)."""

    indices: tuple[int, int, int]
    prompt: str
    settings: dict = field(hash=False)
    model: str | None = None


@dataclass(frozen=True)
class GridResult:
    """The grid's axes (x, then y and z or None), its cells, their images and one grid image per Z value."""

    axes: tuple[Axis, Axis | None, Axis | None]
    cells: tuple[GridCell, ...]
    images: tuple[Image.Image, ...]
    grids: tuple[Image.Image, ...]

    def save(self, folder: str | Path) -> list[Path]:
        """Write `grid.png` (or `grid-NN.png` per Z value) and `images/NNNNN-xX-yY-zZ.png`, each image with
        its A1111 parameters; returns the paths written."""
        folder = Path(folder)
        check_writable_folder(folder)
        (folder / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
        written = []
        for number, (cell, image) in enumerate(zip(self.cells, self.images, strict=True), start=1):
            x, y, z = cell.indices
            path = folder / IMAGES_FOLDER / f"{number:05d}-x{x}-y{y}-z{z}.png"
            written.append(save_png(image, path, image.info["lienzo"]))
        for number, grid in enumerate(self.grids, start=1):
            path = folder / ("grid.png" if len(self.grids) == 1 else f"grid-{number:02d}.png")
            with atomic_path(path) as temporary:
                grid.save(temporary, format="PNG")
            written.append(path)
        return written


def _values(axis: Axis | None) -> Sequence[Any]:
    return (None,) if axis is None else axis.values


def _apply(axis: Axis, value: Any, cell: dict, flag: str) -> None:
    """Set one axis value in a cell under construction (keys: prompt, settings, model, image)."""
    settings = cell["settings"]
    if axis.kind in ("seed", "sampler", "scheduler", "steps", "cfg", "clip_skip"):
        settings[axis.kind] = value
    elif axis.kind == "size":
        settings["width"], settings["height"] = value
    elif axis.kind == "denoising":
        if cell["image"]:
            settings["strength"] = value
        elif settings.get("hires") is not None:
            settings["hires"] = replace(settings["hires"], strength=value)
        else:
            raise InvalidArgumentError(
                f"{flag} denoising: the strength needs a starting image (--image) or a hires pass "
                "(--hires-scale)"
            )
    elif axis.kind == "controlnet_strength":
        if not settings.get("controlnets"):
            raise InvalidArgumentError(f"{flag} controlnet_strength: give a ControlNet unit (--controlnet)")
        settings["controlnets"] = [replace(unit, strength=value) for unit in settings["controlnets"]]
    elif axis.kind == "model":
        cell["model"] = value
    elif axis.kind == "lora":
        cell["prompt"] = f"{cell['prompt']} <lora:{axis.target}:{value:g}>"
    elif axis.kind == "prompt_sr":
        search = axis.values[0]
        if search not in cell["prompt"]:
            raise InvalidArgumentError(
                f"{flag} prompt_sr: {search!r} is not in the prompt {cell['prompt']!r}; the first value is "
                "the text to replace"
            )
        cell["prompt"] = cell["prompt"].replace(search, value)
        negative = settings.get("negative_prompt")
        if negative:
            settings["negative_prompt"] = negative.replace(search, value)


def plan_grid(
    prompt: str,
    axes: Sequence[Axis | None],
    settings: dict,
    *,
    image: bool = False,
    check_name: Callable[[str, str], object] | None = None,
) -> list[GridCell]:
    """Every cell of the grid in z, y, x order, each checked (`validate_request`, and `check_name(kind,
    name)` for the models and LoRAs named) before any image is made."""
    x_axis, y_axis, z_axis = (list(axes) + [None, None])[:3]
    if x_axis is None:
        raise InvalidArgumentError("a grid needs an X axis, e.g. --x cfg=3,7,11")
    if settings.get("batch_size") not in (None, 1):
        raise InvalidArgumentError("a grid makes one image per cell: drop the batch size")
    flags = ("--x", "--y", "--z")
    axes_by_flag = (x_axis, y_axis, z_axis)
    if check_name is not None:
        for axis in filter(None, axes_by_flag):
            if axis.kind == "model":
                for value in axis.values:
                    check_name("checkpoints", value)
            elif axis.kind == "lora":
                check_name("loras", axis.target)
    cells = []
    for (z, z_value), (y, y_value), (x, x_value) in itertools.product(
        enumerate(_values(z_axis)), enumerate(_values(y_axis)), enumerate(_values(x_axis))
    ):
        cell = {"prompt": prompt, "settings": dict(settings), "model": None, "image": image}
        for axis, flag, value in zip(axes_by_flag, flags, (x_value, y_value, z_value), strict=True):
            if axis is not None:
                _apply(axis, value, cell, flag)
        mode = "img2img" if image else "generate"
        validate_request(mode, cell["settings"])
        cells.append(GridCell((x, y, z), cell["prompt"], cell["settings"], cell["model"]))
    return cells


def plot_grid(
    pipe,
    prompt: str,
    axes: Sequence[Axis | str | None],
    *,
    image: ImageInput | None = None,
    load_model: Callable[[str], object] | None = None,
    callback: Callable[[GridCell, Image.Image], None] | None = None,
    **settings,
) -> GridResult:
    """The X/Y/Z plot of `prompt`: `axes` are Axis objects or `NAME=V1,V2,...` texts (x, then y and z);
    `settings` are `Pipeline.generate`'s (img2img's with `image`). A model axis loads each model with
    `load_model(name)` (default: resolved in the pipe's library, loaded on its device and dtype); `callback`
    hears of every finished cell."""
    parsed = [
        axis if axis is None or isinstance(axis, Axis) else parse_axis(axis, flag)
        for axis, flag in zip(axes, ("--x", "--y", "--z"), strict=False)
    ]
    if len(parsed) > 3:
        raise InvalidArgumentError(f"a grid has at most three axes (x, y, z), got {len(parsed)}")
    library = pipe.model_library()
    settings = pipe.resolve_controlnets(settings)
    cells = plan_grid(prompt, parsed, settings, image=image is not None, check_name=library.resolve)
    source = None if image is None else load_image(image)
    loader = load_model or _library_loader(pipe)
    pipes: dict[str | None, object] = {None: pipe}
    images = []
    for cell in cells:
        if cell.model not in pipes:
            pipes[cell.model] = loader(cell.model)
        model = pipes[cell.model]
        if source is None:
            (result,) = model.generate(cell.prompt, progress=False, **cell.settings)
        else:
            (result,) = model.img2img(source, cell.prompt, progress=False, **cell.settings)
        images.append(result)
        if callback is not None:
            callback(cell, result)
    x_axis, y_axis, z_axis = (parsed + [None, None])[:3]
    per_grid = len(_values(x_axis)) * len(_values(y_axis))
    grids = tuple(
        draw_grid(images[start : start + per_grid], x_axis, y_axis, _z_title(z_axis, start // per_grid))
        for start in range(0, len(images), per_grid)
    )
    return GridResult((x_axis, y_axis, z_axis), tuple(cells), tuple(images), grids)


def _library_loader(pipe) -> Callable[[str], object]:
    def load_model(name: str):
        loaded = load(pipe.model_library().resolve("checkpoints", name), device=pipe.device, dtype=pipe.dtype)
        loaded.library = pipe.library
        return loaded

    return load_model


def _z_title(axis: Axis | None, index: int) -> str | None:
    return None if axis is None else f"{axis.title}: {axis.labels[index]}"


def _wrap(text: str, font, width: int) -> list[str]:
    """`text` broken into lines of at most `width` pixels (at spaces, else anywhere)."""
    lines: list[str] = []
    for word in text.split(" "):
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
            continue
        while font.getlength(word) > width and len(word) > 1:
            cut = max(1, next(n for n in range(len(word), 0, -1) if font.getlength(word[:n]) <= width))
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines


def draw_grid(
    images: Sequence[Image.Image], x_axis: Axis, y_axis: Axis | None, title: str | None = None
) -> Image.Image:
    """Images in rows (y) and columns (x) on a white sheet: the X axis title and each column's value on
    top, the Y axis title and each row's value on the left, an optional title (the Z value) above."""
    font = ImageFont.load_default(size=FONT_SIZE)
    line = FONT_SIZE + 4
    columns, rows = len(x_axis.values), 1 if y_axis is None else len(y_axis.values)
    cell_width, cell_height = max(i.width for i in images), max(i.height for i in images)
    column_lines = [_wrap(label, font, cell_width - PADDING) for label in x_axis.labels]
    row_texts = [] if y_axis is None else [*y_axis.labels, y_axis.title]
    left = int(max(font.getlength(text) for text in row_texts)) + 2 * PADDING if row_texts else 0
    head = (1 if title else 0) * line + line + max(len(lines) for lines in column_lines) * line + PADDING
    sheet = Image.new("RGB", (left + columns * cell_width, head + rows * cell_height), GRID_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    top = PADDING // 2
    if title:
        draw.text((PADDING, top), title, fill=GRID_INK, font=font)
        top += line
    axis_title = x_axis.title
    draw.text(
        (left + (columns * cell_width - font.getlength(axis_title)) / 2, top),
        axis_title,
        fill=GRID_INK,
        font=font,
    )
    top += line
    for column, lines in enumerate(column_lines):
        for number, text in enumerate(lines):
            x = left + column * cell_width + (cell_width - font.getlength(text)) / 2
            draw.text((x, top + number * line), text, fill=GRID_INK, font=font)
    if y_axis is not None:
        draw.text((PADDING, head - line - PADDING // 2), y_axis.title, fill=GRID_INK, font=font)
        for row, label in enumerate(y_axis.labels):
            y = head + row * cell_height + (cell_height - line) / 2
            draw.text((PADDING, y), label, fill=GRID_INK, font=font)
    for index, picture in enumerate(images):
        row, column = divmod(index, columns)
        x = left + column * cell_width + (cell_width - picture.width) // 2
        y = head + row * cell_height + (cell_height - picture.height) // 2
        sheet.paste(picture, (x, y))
    return sheet
