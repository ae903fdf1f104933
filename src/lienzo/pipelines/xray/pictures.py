"""The x-ray's pictures, drawn with PIL: the sigma schedule plot, the two-row trajectory filmstrip and the
grayscale attention maps."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lienzo.pipelines.preview import Frame, filmstrip

PLOT_SIZE = (640, 360)
PLOT_MARGINS = (64, 36, 24, 48)
"""Left, top, right, bottom margins of the plot area in pixels."""
PLOT_BACKGROUND = (255, 255, 255)
PLOT_INK = (40, 40, 40)
PLOT_GRID = (225, 225, 225)
PLOT_LINE = (40, 90, 220)
Y_TICKS = 5
ROW_TITLE_WIDTH = 96
STRIP_BACKGROUND = (24, 24, 24)
STRIP_INK = (235, 235, 235)


def sigma_plot(sigmas: list[float], title: str) -> Image.Image:
    """A line plot of sigma against the step index (0 .. steps), with gridlines, ticks and a title."""
    image = Image.new("RGB", PLOT_SIZE, PLOT_BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = PLOT_MARGINS
    x0, y0, x1, y1 = left, top, PLOT_SIZE[0] - right, PLOT_SIZE[1] - bottom
    top_value = max(max(sigmas), 1e-8)
    steps = max(len(sigmas) - 1, 1)

    def point(index: int, value: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * index / steps, y1 - (y1 - y0) * value / top_value

    for tick in range(Y_TICKS + 1):
        value = top_value * tick / Y_TICKS
        _, y = point(0, value)
        draw.line([(x0, y), (x1, y)], fill=PLOT_GRID)
        label = f"{value:.3g}"
        draw.text((x0 - 6 - font.getlength(label), y - 6), label, fill=PLOT_INK, font=font)
    for index in sorted({0, steps, *range(0, steps, max(1, steps // 10))}):
        x, _ = point(index, 0)
        draw.line([(x, y1), (x, y1 + 4)], fill=PLOT_INK)
        label = str(index)
        draw.text((x - font.getlength(label) / 2, y1 + 6), label, fill=PLOT_INK, font=font)
    draw.rectangle([x0, y0, x1, y1], outline=PLOT_INK)
    points = [point(index, value) for index, value in enumerate(sigmas)]
    draw.line(points, fill=PLOT_LINE, width=2)
    for x, y in points:
        draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=PLOT_LINE)
    draw.text((x0, 10), title, fill=PLOT_INK, font=font)
    draw.text(((x0 + x1) / 2 - 12, PLOT_SIZE[1] - 20), "step", fill=PLOT_INK, font=font)
    draw.text((8, 10), "sigma", fill=PLOT_INK, font=font)
    return image


def trajectory_rows(frames) -> list[tuple[str, list[Frame]]]:
    """The two rows of an x-ray trajectory: the decoded x0 predictions and the decoded noisy latents."""
    return [
        ("x0 prediction", [Frame(f"step {frame.step}", frame.prediction) for frame in frames]),
        ("noisy latent", [Frame(f"step {frame.step}", frame.noisy) for frame in frames]),
    ]


def trajectory_strip(rows: list[tuple[str, list[Frame]]]) -> Image.Image:
    """Filmstrips stacked as rows (each `preview.filmstrip`), each behind a band with its title."""
    font = ImageFont.load_default()
    strips = [(title, filmstrip(frames)) for title, frames in rows]
    width = ROW_TITLE_WIDTH + max(strip.width for _, strip in strips)
    image = Image.new("RGB", (width, sum(strip.height for _, strip in strips)), STRIP_BACKGROUND)
    draw = ImageDraw.Draw(image)
    top = 0
    for title, strip in strips:
        image.paste(strip, (ROW_TITLE_WIDTH, top))
        for line, text in enumerate(title.split("\n")):
            draw.text((6, top + strip.height // 2 - 8 + 12 * line), text, fill=STRIP_INK, font=font)
        top += strip.height
    return image


def map_image(values: np.ndarray) -> Image.Image:
    """A grayscale image of a map scaled so its lowest value is black and its largest white (all black when
    it is flat)."""
    low = float(values.min()) if values.size else 0.0
    span = float(values.max()) - low if values.size else 0.0
    scaled = (values - low) / span if span > 0 else np.zeros_like(values)
    return Image.fromarray(np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8))
