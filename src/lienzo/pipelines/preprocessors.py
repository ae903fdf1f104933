"""ControlNet preprocessors: pure functions from an image to a control image (RGB, the input's size).

canny: OpenCV's Canny edges (Canny 1986) with A1111's default thresholds 100/200, white on black.
scribble: A1111's "scribble_xdog" recipe: a difference of Gaussians (sigma 0.5 and 5) of the image, the
  per-pixel minimum over the channels, thresholded at `threshold`/2 — white strokes where the image has
  dark lines or edges, no learned network (HED) needed.
depth: DPT (MiDaS) relative depth, near = white (needs depth-estimator weights; see depth_estimation).
invert: 255 - value, for control images drawn black on white.
none: the image as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.depth_estimation import DepthEstimator, depth_image, load_depth_estimator

CANNY_LOW = 100
CANNY_HIGH = 200
SCRIBBLE_THRESHOLD = 32
SCRIBBLE_SIGMAS = (0.5, 5.0)


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _rgb_image(mask: np.ndarray) -> Image.Image:
    """An RGB image whose three channels are the (H, W) uint8 map."""
    return Image.fromarray(np.stack([mask] * 3, axis=-1), "RGB")


def _check_threshold(name: str, value: float) -> None:
    if not 0 <= value <= 255:
        raise InvalidArgumentError(f"{name} must lie in [0, 255], got {value}")


def canny(
    image: Image.Image, *, low_threshold: float = CANNY_LOW, high_threshold: float = CANNY_HIGH
) -> Image.Image:
    """Canny edges of the RGB image (the strongest channel gradient), 255 on edges, 0 elsewhere."""
    _check_threshold("the low threshold", low_threshold)
    _check_threshold("the high threshold", high_threshold)
    if low_threshold > high_threshold:
        raise InvalidArgumentError(
            f"the low threshold ({low_threshold}) must not exceed the high threshold ({high_threshold})"
        )
    return _rgb_image(cv2.Canny(_rgb_array(image), low_threshold, high_threshold))


def scribble(image: Image.Image, *, threshold: float = SCRIBBLE_THRESHOLD) -> Image.Image:
    """White strokes where the difference of Gaussians (coarse minus fine blur) exceeds `threshold`/2 in every
    channel: the dark lines and edges of the image, as A1111's scribble_xdog finds them."""
    _check_threshold("the scribble threshold", threshold)
    values = _rgb_array(image).astype(np.float32)
    fine, coarse = (cv2.GaussianBlur(values, (0, 0), sigma) for sigma in SCRIBBLE_SIGMAS)
    difference = np.clip(np.min(coarse - fine, axis=2), 0, 255)
    return _rgb_image(np.where(2 * difference > threshold, 255, 0).astype(np.uint8))


def depth(
    image: Image.Image,
    *,
    estimator: DepthEstimator | None = None,
    model_folder: str | Path | None = None,
    models_dir: str | Path | None = None,
) -> Image.Image:
    """DPT depth of the image, scaled to 0..255 by its range (near = white). The estimator is `estimator`,
    else the one of `model_folder` (a diffusers depth model) or `models_dir`/depth/ (default ./models)."""
    if estimator is None:
        estimator = load_depth_estimator(model_folder, None if models_dir is None else Path(models_dir))
    return depth_image(image, estimator)


def invert(image: Image.Image) -> Image.Image:
    """255 minus every RGB value (an involution: inverting twice gives the image back)."""
    return Image.fromarray(255 - _rgb_array(image), "RGB")


def none(image: Image.Image) -> Image.Image:
    """The image as it is, in RGB."""
    return image.convert("RGB")


PREPROCESSORS: dict[str, Callable[..., Image.Image]] = {
    "canny": canny,
    "scribble": scribble,
    "depth": depth,
    "invert": invert,
    "none": none,
}
PREPROCESSOR_OPTIONS: dict[str, tuple[str, ...]] = {
    "canny": ("low_threshold", "high_threshold"),
    "scribble": ("threshold",),
    "depth": ("estimator", "model_folder", "models_dir"),
    "invert": (),
    "none": (),
}
"""The keyword options each preprocessor takes."""


def preprocess(kind: str, image: Image.Image, **options) -> Image.Image:
    """The control image of `kind` for `image`; options left None take their defaults, and an option the
    preprocessor does not take is an error."""
    if kind not in PREPROCESSORS:
        raise InvalidArgumentError(f"unknown preprocessor {kind!r}; use one of: {', '.join(PREPROCESSORS)}")
    given = {name: value for name, value in options.items() if value is not None}
    foreign = sorted(set(given) - set(PREPROCESSOR_OPTIONS[kind]))
    if foreign:
        takes = ", ".join(PREPROCESSOR_OPTIONS[kind]) or "no options"
        raise InvalidArgumentError(
            f"the {kind} preprocessor does not take {', '.join(foreign)}; it takes {takes}"
        )
    return PREPROCESSORS[kind](image, **given)
