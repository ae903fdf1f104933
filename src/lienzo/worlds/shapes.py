"""The shapes world: palette, shapes, scenes, the scene sampler, the renderer and the captioner."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from lienzo.errors import InvalidArgumentError

CANVAS = 128
SUPERSAMPLING = 2

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 47),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 50),
    "green": (50, 170, 70),
    "blue": (40, 90, 220),
    "purple": (140, 70, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOURS = tuple(PALETTE)

BASE_SHAPES = ("circle", "square", "triangle", "cross")
RESERVED_SHAPES = ("star", "heart")
SHAPES = BASE_SHAPES + RESERVED_SHAPES
CROSS_ARM_FRACTION = 0.4

SIZES: dict[str, int] = {"small": 24, "large": 40}
SIZE_JITTER = 2

CELL_CENTRES = (24, 64, 104)
POSITION_JITTER = 4
MIN_GAP = 4
CELLS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}
POSITION_PHRASES: dict[str, str] = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}

HELD_OUT_PAIRS = frozenset(
    {("green", "triangle"), ("purple", "circle"), ("yellow", "cross"), ("white", "square")}
)


@dataclass(frozen=True)
class SceneObject:
    """One solid object: its named attributes plus the pixel jitter of its centre and extent."""

    colour: str
    shape: str
    size: str
    cell: str
    dx: int = 0
    dy: int = 0
    dsize: int = 0

    @property
    def extent(self) -> int:
        """Side of the object's bounding box in pixels."""
        return SIZES[self.size] + self.dsize

    @property
    def centre(self) -> tuple[int, int]:
        """Centre of the bounding box in pixels (x, y)."""
        column, row = CELLS[self.cell]
        return CELL_CENTRES[column] + self.dx, CELL_CENTRES[row] + self.dy

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Bounding box (left, top, right, bottom) in pixel edges."""
        x, y = self.centre
        half = self.extent / 2
        return x - half, y - half, x + half, y + half


@dataclass(frozen=True)
class Scene:
    """A background colour and one or two objects."""

    background: str
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)


def article(word: str) -> str:
    """The indefinite article English wants before `word` ("an orange", "a large")."""
    return "an" if word[0] in "aeiou" else "a"


def boxes_apart(first: SceneObject, second: SceneObject, gap: float = MIN_GAP) -> bool:
    """True when the two bounding boxes are separated by at least `gap` pixels on some axis."""
    a, b = first.box, second.box
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _jitter_range(cell_index: int, extent: int) -> tuple[int, int]:
    """Allowed centre jitter on one axis so the object stays one pixel inside the canvas."""
    centre, half = CELL_CENTRES[cell_index], extent / 2
    low = max(-POSITION_JITTER, math.ceil(1 + half - centre))
    high = min(POSITION_JITTER, math.floor(CANVAS - 1 - half - centre))
    return low, high


def _jittered(rng: np.random.Generator, obj: SceneObject) -> SceneObject:
    dsize = int(rng.integers(-SIZE_JITTER, SIZE_JITTER + 1))
    extent = SIZES[obj.size] + dsize
    column, row = CELLS[obj.cell]
    x_low, x_high = _jitter_range(column, extent)
    y_low, y_high = _jitter_range(row, extent)
    dx = int(rng.integers(x_low, x_high + 1))
    dy = int(rng.integers(y_low, y_high + 1))
    return SceneObject(obj.colour, obj.shape, obj.size, obj.cell, dx, dy, dsize)


def sample_scene(
    rng: np.random.Generator,
    *,
    allow_held_out: bool = False,
    objects: int | None = None,
    shapes: tuple[str, ...] = BASE_SHAPES,
    sizes: tuple[str, ...] = tuple(SIZES),
) -> Scene:
    """A random scene per the world's spec, its objects drawn from `shapes` and `sizes`; held-out
    colour-shape pairs only when `allow_held_out`."""
    count = int(rng.integers(1, 3)) if objects is None else objects
    if count not in (1, 2):
        raise InvalidArgumentError(f"a scene holds one or two objects, not {count}; ask for 1 or 2")
    background = COLOURS[rng.integers(len(COLOURS))]
    cells = [tuple(CELLS)[i] for i in rng.choice(len(CELLS), size=count, replace=False)]
    placed: list[SceneObject] = []
    for cell in cells:
        while True:
            colour = COLOURS[rng.integers(len(COLOURS))]
            shape = shapes[rng.integers(len(shapes))]
            if colour != background and (allow_held_out or (colour, shape) not in HELD_OUT_PAIRS):
                break
        size = sizes[rng.integers(len(sizes))]
        placed.append(SceneObject(colour, shape, size, cell))
    while True:
        jittered = tuple(_jittered(rng, obj) for obj in placed)
        if len(jittered) == 1 or boxes_apart(*jittered):
            return Scene(background, jittered)


def _star_points(radius: float, inner_ratio: float = 0.382) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        angle = -math.pi / 2 + k * math.pi / 5
        r = radius if k % 2 == 0 else radius * inner_ratio
        points.append((r * math.cos(angle), r * math.sin(angle)))
    return points


def _heart_points(samples: int = 96) -> list[tuple[float, float]]:
    points = []
    for k in range(samples):
        t = 2 * math.pi * k / samples
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((x, -y))
    return points


def _fit_to_box(points: list[tuple[float, float]], box: tuple[float, float, float, float]) -> list[tuple]:
    """Scale a polygon uniformly so its larger side fills `box`, centred in it."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    scale = (box[2] - box[0]) / max(width, height)
    x0 = (box[0] + box[2]) / 2 - scale * (min(xs) + max(xs)) / 2
    y0 = (box[1] + box[3]) / 2 - scale * (min(ys) + max(ys)) / 2
    return [(x0 + scale * x, y0 + scale * y) for x, y in points]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    """Fill `shape` into the bounding box (left, top, right, bottom), given in pixel edges."""
    left, top, right, bottom = box
    inner = (left, top, right - 1, bottom - 1)
    if shape == "circle":
        draw.ellipse(inner, fill=fill)
    elif shape == "square":
        draw.rectangle(inner, fill=fill)
    elif shape == "triangle":
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)
    elif shape == "cross":
        arm = (right - left) * CROSS_ARM_FRACTION
        middle_x, middle_y = (left + right) / 2, (top + bottom) / 2
        draw.rectangle((middle_x - arm / 2, top, middle_x + arm / 2 - 1, bottom - 1), fill=fill)
        draw.rectangle((left, middle_y - arm / 2, right - 1, middle_y + arm / 2 - 1), fill=fill)
    elif shape == "star":
        draw.polygon(_fit_to_box(_star_points(1.0), box), fill=fill)
    elif shape == "heart":
        draw.polygon(_fit_to_box(_heart_points(), box), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def render(scene: Scene) -> Image.Image:
    """Render a scene as a 128x128 RGB image (drawn at 2x, then box-filtered down)."""
    scale = SUPERSAMPLING
    image = Image.new("RGB", (CANVAS * scale, CANVAS * scale), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        box = tuple(scale * edge for edge in obj.box)
        draw_shape(draw, obj.shape, box, PALETTE[obj.colour])
    return image.resize((CANVAS, CANVAS), Image.Resampling.BOX)


def describe_object(obj: SceneObject, *, with_size: bool = True, with_position: bool = True) -> str:
    """One object's noun phrase, e.g. "a large red circle on the left"."""
    words = ([obj.size] if with_size else []) + [obj.colour, obj.shape]
    phrase = f"{article(words[0])} {' '.join(words)}"
    return f"{phrase} {POSITION_PHRASES[obj.cell]}" if with_position else phrase


def caption(
    scene: Scene,
    rng: np.random.Generator | None = None,
    *,
    drop_size: float = 0.3,
    drop_position: float = 0.3,
) -> str:
    """The scene's caption; with an `rng`, each size and position phrase is dropped with its probability."""
    parts = []
    for obj in scene.objects:
        keep_size = rng is None or rng.random() >= drop_size
        keep_position = rng is None or rng.random() >= drop_position
        parts.append(describe_object(obj, with_size=keep_size, with_position=keep_position))
    return f"{' and '.join(parts)} on {article(scene.background)} {scene.background} background"
