"""Score an image against a shapes-world prompt: parse the prompt, detect the scene, compare."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from lienzo.errors import InvalidArgumentError
from lienzo.worlds.shapes import (
    CANVAS,
    CELL_CENTRES,
    CELLS,
    COLOURS,
    PALETTE,
    POSITION_PHRASES,
    SHAPES,
    SIZES,
    draw_shape,
)

MIN_CORE_AREA = 60
OCCUPANCY_GRID = 10
SIZE_THRESHOLD = sum(SIZES.values()) / 2
_PALETTE_ARRAY = np.array([PALETTE[name] for name in COLOURS], dtype=np.float32)
_PALETTE_NORMS = (_PALETTE_ARRAY**2).sum(axis=1)
_CELL_BY_INDEX = {index: name for name, index in CELLS.items()}
_PHRASE_TO_CELL = {phrase: cell for cell, phrase in POSITION_PHRASES.items()}

_COLOUR = "|".join(COLOURS)
_OBJECT_PATTERN = re.compile(
    rf"an? (?:(?P<size>{'|'.join(SIZES)}) )?(?P<colour>{_COLOUR}) (?P<shape>{'|'.join(SHAPES)})"
    rf"(?: (?P<position>{'|'.join(POSITION_PHRASES.values())}))?"
)
_PROMPT_PATTERN = re.compile(rf"(?P<objects>.+) on an? (?P<background>{_COLOUR}) background")


@dataclass(frozen=True)
class ExpectedObject:
    """An object a prompt asks for; size and cell are None where the prompt leaves them open."""

    colour: str
    shape: str
    size: str | None = None
    cell: str | None = None


@dataclass(frozen=True)
class ExpectedScene:
    """What a prompt asks for: a background and the named objects."""

    background: str
    objects: tuple[ExpectedObject, ...]


@dataclass(frozen=True)
class DetectedObject:
    """A connected region found in an image, with its classified attributes and raw measurements."""

    colour: str
    shape: str
    size: str
    cell: str
    area: int
    box: tuple[int, int, int, int]
    centroid: tuple[float, float]


@dataclass(frozen=True)
class DetectedScene:
    """The scene read from an image: its background and its objects."""

    background: str
    objects: tuple[DetectedObject, ...]


@dataclass(frozen=True)
class ObjectMatch:
    """Per-attribute match of one expected object; size/position are None when the prompt omits them."""

    colour: bool
    shape: bool
    size: bool | None
    position: bool | None

    @property
    def matched(self) -> bool:
        """True when every attribute the prompt names is found."""
        return all(value is not False for value in (self.colour, self.shape, self.size, self.position))


@dataclass(frozen=True)
class ScoreResult:
    """How one image obeys one prompt: per-attribute matches and the whole-prompt verdict."""

    prompt: str
    expected: ExpectedScene
    detected: DetectedScene
    background: bool
    count: bool
    objects: tuple[ObjectMatch, ...]

    @property
    def matched(self) -> bool:
        """True when the background, the object count and every named attribute match."""
        return self.background and self.count and all(obj.matched for obj in self.objects)


def parse_prompt(prompt: str) -> ExpectedScene:
    """Parse a caption of the shapes-world grammar into the scene it asks for."""
    text = " ".join(prompt.lower().strip().rstrip(".").split())
    whole = _PROMPT_PATTERN.fullmatch(text)
    if whole is None:
        raise InvalidArgumentError(
            f"cannot read {prompt!r} as a shapes-world prompt; write e.g. "
            "'a large red circle on the left on a blue background'"
        )
    objects = []
    for part in whole["objects"].split(" and "):
        match = _OBJECT_PATTERN.fullmatch(part)
        if match is None:
            raise InvalidArgumentError(
                f"cannot read the object {part!r} in {prompt!r}; write '<a|an> [small|large] <colour> "
                "<shape> [position]', e.g. 'a small green square in the top left'"
            )
        cell = _PHRASE_TO_CELL[match["position"]] if match["position"] else None
        objects.append(ExpectedObject(match["colour"], match["shape"], match["size"], cell))
    if len(objects) > 2:
        raise InvalidArgumentError(f"{prompt!r} names {len(objects)} objects; the world holds one or two")
    return ExpectedScene(whole["background"], tuple(objects))


def snap_to_palette(image: Image.Image) -> np.ndarray:
    """Index of the nearest palette colour for every pixel (H, W), by squared RGB distance."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    distances = _PALETTE_NORMS - 2.0 * (pixels @ _PALETTE_ARRAY.T)
    return distances.argmin(axis=-1)


def border_colour(indices: np.ndarray) -> int:
    """The most common palette index on the image border."""
    border = np.concatenate([indices[0], indices[-1], indices[1:-1, 0], indices[1:-1, -1]])
    return int(np.bincount(border, minlength=len(COLOURS)).argmax())


def label_regions(indices: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """4-connected components of equal colour within `foreground`: each pixel gets its region's
    smallest flat index (-1 outside), by min-label propagation with pointer jumping."""
    height, width = indices.shape
    sentinel = height * width
    labels = np.where(foreground, np.arange(sentinel).reshape(height, width), sentinel)
    same_right = foreground[:, :-1] & foreground[:, 1:] & (indices[:, :-1] == indices[:, 1:])
    same_down = foreground[:-1] & foreground[1:] & (indices[:-1] == indices[1:])
    flat_foreground = foreground.ravel()
    while True:
        updated = labels.copy()
        np.minimum(updated[:, :-1], np.where(same_right, labels[:, 1:], sentinel), out=updated[:, :-1])
        np.minimum(updated[:, 1:], np.where(same_right, labels[:, :-1], sentinel), out=updated[:, 1:])
        np.minimum(updated[:-1], np.where(same_down, labels[1:], sentinel), out=updated[:-1])
        np.minimum(updated[1:], np.where(same_down, labels[:-1], sentinel), out=updated[1:])
        flat = updated.ravel()
        flat[flat_foreground] = flat[flat[flat_foreground]]
        if np.array_equal(updated, labels):
            return np.where(foreground, labels, -1)
        labels = updated


def occupancy(mask: np.ndarray) -> np.ndarray:
    """Fraction of each cell of a coarse grid over the mask's bounding box that the mask fills."""
    crop = Image.fromarray(mask.astype(np.uint8) * 255)
    grid = crop.resize((OCCUPANCY_GRID, OCCUPANCY_GRID), Image.Resampling.BOX)
    return np.asarray(grid, dtype=np.float32).ravel() / 255.0


@cache
def shape_prototypes() -> dict[str, np.ndarray]:
    """Occupancy grid of every shape, drawn large by the world's own renderer."""
    prototypes = {}
    side = 200
    for shape in SHAPES:
        image = Image.new("L", (side, side), 0)
        draw_shape(ImageDraw.Draw(image), shape, (0, 0, side, side), 255)
        mask = np.asarray(image) > 127
        rows, columns = np.nonzero(mask)
        prototypes[shape] = occupancy(mask[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1])
    return prototypes


def classify_shape(mask: np.ndarray) -> str:
    """The shape whose prototype is nearest: fill of the bounding box and which corners are filled,
    read from a coarse occupancy grid."""
    grid = occupancy(mask)
    return min(shape_prototypes().items(), key=lambda item: float(((item[1] - grid) ** 2).sum()))[0]


def _cell_of(x: float, y: float) -> str:
    bounds = [(a + b) / 2 for a, b in itertools.pairwise(CELL_CENTRES)]
    column = int(np.searchsorted(bounds, x))
    row = int(np.searchsorted(bounds, y))
    return _CELL_BY_INDEX[(column, row)]


def detect_scene(image: Image.Image) -> DetectedScene:
    """Read the scene in an image: snap to the palette, background from the border, objects from
    connected regions whose core (pixels with all four neighbours inside) is large enough."""
    if image.size != (CANVAS, CANVAS):
        image = image.resize((CANVAS, CANVAS), Image.Resampling.BOX)
    indices = snap_to_palette(image)
    background = border_colour(indices)
    labels = label_regions(indices, indices != background)
    core = np.zeros_like(labels, dtype=bool)
    inner = labels[1:-1, 1:-1]
    core[1:-1, 1:-1] = (
        (inner >= 0)
        & (labels[:-2, 1:-1] == inner)
        & (labels[2:, 1:-1] == inner)
        & (labels[1:-1, :-2] == inner)
        & (labels[1:-1, 2:] == inner)
    )
    core_counts = np.bincount(labels[core], minlength=labels.size)
    objects = []
    for region in np.nonzero(core_counts >= MIN_CORE_AREA)[0]:
        mask = labels == region
        rows, columns = np.nonzero(mask)
        top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
        centroid = (float(columns.mean()) + 0.5, float(rows.mean()) + 0.5)
        extent = max(bottom - top, right - left)
        objects.append(
            DetectedObject(
                colour=COLOURS[indices.flat[region]],
                shape=classify_shape(mask[top:bottom, left:right]),
                size="small" if extent < SIZE_THRESHOLD else "large",
                cell=_cell_of(*centroid),
                area=int(rows.size),
                box=(int(left), int(top), int(right), int(bottom)),
                centroid=centroid,
            )
        )
    objects.sort(key=lambda obj: -obj.area)
    return DetectedScene(COLOURS[background], tuple(objects))


def _object_match(expected: ExpectedObject, found: DetectedObject | None) -> ObjectMatch:
    if found is None:
        return ObjectMatch(False, False, False if expected.size else None, False if expected.cell else None)
    return ObjectMatch(
        colour=expected.colour == found.colour,
        shape=expected.shape == found.shape,
        size=None if expected.size is None else expected.size == found.size,
        position=None if expected.cell is None else expected.cell == found.cell,
    )


def compare(expected: ExpectedScene, detected: DetectedScene) -> tuple[ObjectMatch, ...]:
    """Pair expected with detected objects so that the most attributes match; unpaired ones fail."""
    found: list[DetectedObject | None] = list(detected.objects)
    found += [None] * max(0, len(expected.objects) - len(found))
    best: tuple[ObjectMatch, ...] = ()
    best_hits = -1
    for chosen in itertools.permutations(found, len(expected.objects)):
        matches = tuple(_object_match(e, f) for e, f in zip(expected.objects, chosen, strict=True))
        hits = sum(m.matched * 10 + sum(v is True for v in vars(m).values()) for m in matches)
        if hits > best_hits:
            best, best_hits = matches, hits
    return best


def score(prompt: str, image: Image.Image) -> ScoreResult:
    """Score an image against a shapes-world prompt, per attribute and as a whole."""
    expected = parse_prompt(prompt)
    detected = detect_scene(image)
    return ScoreResult(
        prompt=prompt,
        expected=expected,
        detected=detected,
        background=expected.background == detected.background,
        count=len(expected.objects) == len(detected.objects),
        objects=compare(expected, detected),
    )
