"""Generic procedural shapes for teaching the VAE decoder to be a general shape codec: random convex and
concave polygons, star polygons that never have five points, irregular blobs and rings, in the world's
palette, sizes and positions. None of them is a reserved shape (`star`, `heart`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from lienzo.worlds.dataset import ShapesDataConfig, ShapesDataset, image_to_tensor
from lienzo.worlds.shapes import CANVAS, COLOURS, PALETTE, SIZE_JITTER, SIZES, SUPERSAMPLING

GENERIC_KINDS = ("convex", "concave", "star_polygon", "blob", "ring")
STAR_POLYGON_POINTS = (4, 6, 7, 8)
"""Points of the generic star polygons: five (the reserved `star`) is never drawn."""


def _convex(rng: np.random.Generator) -> list[tuple[float, float]]:
    """A convex n-gon (3 to 9 vertices) at random angles on the unit circle."""
    count = int(rng.integers(3, 10))
    angles = np.sort(rng.uniform(0, 2 * math.pi, count))
    if np.max(np.diff(np.concatenate([angles, angles[:1] + 2 * math.pi]))) > math.pi:
        angles = rng.uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(count) / count
    return [(math.cos(a), math.sin(a)) for a in angles]


def _concave(rng: np.random.Generator) -> list[tuple[float, float]]:
    """A star-shaped (radially monotone) polygon of 4 to 9 vertices at random radii: mostly concave."""
    count = int(rng.integers(4, 10))
    angles = rng.uniform(0, 2 * math.pi) + np.sort(rng.uniform(0, 2 * math.pi, count))
    radii = rng.uniform(0.35, 1.0, count)
    return [(r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles, strict=True)]


def _star_polygon(rng: np.random.Generator) -> list[tuple[float, float]]:
    """A regular star polygon with 4, 6, 7 or 8 points and a random inner ratio, randomly rotated."""
    points = int(rng.choice(STAR_POLYGON_POINTS))
    inner = rng.uniform(0.3, 0.7)
    start = rng.uniform(0, 2 * math.pi)
    vertices = []
    for k in range(2 * points):
        angle = start + k * math.pi / points
        radius = 1.0 if k % 2 == 0 else inner
        vertices.append((radius * math.cos(angle), radius * math.sin(angle)))
    return vertices


def _blob(rng: np.random.Generator, samples: int = 72) -> list[tuple[float, float]]:
    """An irregular blob: a circle whose radius carries three random low Fourier harmonics."""
    harmonics = [(k, rng.uniform(0, 0.22), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 4)]
    vertices = []
    for step in range(samples):
        angle = 2 * math.pi * step / samples
        radius = 1.0 + sum(a * math.cos(k * angle + phase) for k, a, phase in harmonics)
        vertices.append((radius * math.cos(angle), radius * math.sin(angle)))
    return vertices


def _fitted(vertices: list[tuple[float, float]], box: tuple[float, float, float, float]) -> list[tuple]:
    """Scale a polygon uniformly so its larger side fills `box`, centred in it."""
    xs, ys = [v[0] for v in vertices], [v[1] for v in vertices]
    scale = (box[2] - box[0]) / max(max(xs) - min(xs), max(ys) - min(ys))
    x0 = (box[0] + box[2]) / 2 - scale * (min(xs) + max(xs)) / 2
    y0 = (box[1] + box[3]) / 2 - scale * (min(ys) + max(ys)) / 2
    return [(x0 + scale * x, y0 + scale * y) for x, y in vertices]


def draw_generic(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    kind: str,
    box: tuple[float, float, float, float],
    fill: tuple[int, int, int],
    background: tuple[int, int, int],
) -> None:
    """Fill one generic shape of `kind` into `box` (left, top, right, bottom); a ring cuts its hole with
    the background colour."""
    if kind == "ring":
        left, top, right, bottom = box
        draw.ellipse((left, top, right - 1, bottom - 1), fill=fill)
        inset = (right - left) * rng.uniform(0.18, 0.32)
        draw.ellipse((left + inset, top + inset, right - 1 - inset, bottom - 1 - inset), fill=background)
        return
    makers = {"convex": _convex, "concave": _concave, "star_polygon": _star_polygon, "blob": _blob}
    draw.polygon(_fitted(makers[kind](rng), box), fill=fill)


def render_generic(rng: np.random.Generator, max_objects: int = 3) -> Image.Image:
    """A 128x128 scene of 1 to `max_objects` generic shapes (world sizes with jitter, any position, in
    palette colours unlike the background), drawn at 2x and box-filtered down like the world's scenes."""
    scale = SUPERSAMPLING
    background = COLOURS[rng.integers(len(COLOURS))]
    image = Image.new("RGB", (CANVAS * scale, CANVAS * scale), PALETTE[background])
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        colour = COLOURS[rng.integers(len(COLOURS))]
        while colour == background:
            colour = COLOURS[rng.integers(len(COLOURS))]
        extent = SIZES[tuple(SIZES)[rng.integers(len(SIZES))]] + rng.integers(-SIZE_JITTER, SIZE_JITTER + 1)
        x, y = rng.uniform(1 + extent / 2, CANVAS - 1 - extent / 2, size=2)
        box = tuple(scale * edge for edge in (x - extent / 2, y - extent / 2, x + extent / 2, y + extent / 2))
        kind = GENERIC_KINDS[rng.integers(len(GENERIC_KINDS))]
        draw_generic(draw, rng, kind, box, PALETTE[colour], PALETTE[background])
    return image.resize((CANVAS, CANVAS), Image.Resampling.BOX)


@dataclass(frozen=True)
class CodecDataConfig:
    """A mix of generic-shape scenes (share `generic_share`) and the base world's scenes."""

    world: ShapesDataConfig = ShapesDataConfig()
    generic_share: float = 0.5
    seed: int = 0


class CodecShapesDataset:
    """Item i ({"image": tensor (3, 128, 128) in [-1, 1]}) is a generic-shape scene with probability
    `generic_share`, else the base world's scene i; a pure function of (seed, i)."""

    def __init__(self, config: CodecDataConfig | None = None):
        self.config = config or CodecDataConfig()
        self.world = ShapesDataset(self.config.world)

    def __getitem__(self, index: int) -> dict[str, object]:
        rng = np.random.default_rng([self.config.seed, index, 7])
        if rng.random() < self.config.generic_share:
            return {"image": image_to_tensor(render_generic(rng)), "caption": ""}
        return self.world[index]
