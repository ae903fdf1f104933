"""Loss log of a run: a CSV file (step, loss, learning rate, seconds) and a loss-curve PNG drawn with PIL."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from PIL import Image, ImageDraw

CSV_NAME = "loss.csv"
PLOT_NAME = "loss.png"
CSV_FIELDS = ("step", "loss", "learning_rate", "seconds")


class LossLog:
    """Appends one CSV row per logged step; on resume, rows past the resumed step are dropped."""

    def __init__(self, folder: Path, resume_step: int = 0):
        self.csv_path = folder / CSV_NAME
        self.plot_path = folder / PLOT_NAME
        kept = [row for row in read_loss_csv(self.csv_path) if int(row["step"]) <= resume_step]
        folder.mkdir(parents=True, exist_ok=True)
        with open(self.csv_path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(kept)

    def append(self, step: int, loss: float, learning_rate: float, seconds: float) -> None:
        """Add one row."""
        with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerow([step, f"{loss:.6g}", f"{learning_rate:.6g}", f"{seconds:.3f}"])

    def plot(self) -> None:
        """Redraw the loss-curve PNG from the CSV."""
        rows = read_loss_csv(self.csv_path)
        draw_loss_curve([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]).save(self.plot_path)


def read_loss_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a loss CSV, or none when the file does not exist."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def draw_loss_curve(steps: list[int], losses: list[float], size: tuple[int, int] = (640, 360)) -> Image.Image:
    """Loss against step on a log10 loss axis, with axis labels at the extremes."""
    width, height = size
    margin = 48
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([margin, margin // 2, width - margin // 2, height - margin], outline="black")
    points = [(s, math.log10(v)) for s, v in zip(steps, losses, strict=True) if v > 0 and math.isfinite(v)]
    if not points:
        draw.text((margin + 8, height // 2), "no losses logged yet", fill="black")
        return image
    low_step, high_step = min(p[0] for p in points), max(p[0] for p in points)
    low_loss, high_loss = min(p[1] for p in points), max(p[1] for p in points)
    step_span = max(high_step - low_step, 1)
    loss_span = max(high_loss - low_loss, 1e-6)
    plot_width, plot_height = width - 1.5 * margin, height - 1.5 * margin

    def to_pixel(step: int, log_loss: float) -> tuple[float, float]:
        x = margin + (step - low_step) / step_span * plot_width
        y = margin // 2 + (high_loss - log_loss) / loss_span * plot_height
        return x, y

    pixels = [to_pixel(*p) for p in points]
    if len(pixels) > 1:
        draw.line(pixels, fill=(40, 90, 220), width=2)
    else:
        x, y = pixels[0]
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(40, 90, 220))
    draw.text((4, margin // 2), f"{10**high_loss:.3g}", fill="black")
    draw.text((4, height - margin - 10), f"{10**low_loss:.3g}", fill="black")
    draw.text((margin, height - margin + 6), str(low_step), fill="black")
    draw.text((width - margin, height - margin + 6), str(high_step), fill="black")
    draw.text((width // 2 - 40, height - 20), "step (loss, log scale)", fill="black")
    return image
