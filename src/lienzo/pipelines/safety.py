"""The safety checker on generated images: `auto` (on when the model folder ships a checker, as diffusers
decides), `on` or `off`. A flagged image is painted black (same size and object), its record says so
(`image.info["lienzo"]["safety_checker"]`, written to the PNG parameters) and an NSFWContentWarning is
issued; nothing is filtered silently."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from lienzo.errors import InvalidArgumentError, ModelNotFoundError
from lienzo.io.image_processor_files import CLIPProcessorSettings
from lienzo.io.safety_checker_files import lists_safety_checker, read_safety_checker
from lienzo.models.safety_checker import SafetyChecker, SafetyScores
from lienzo.pipelines.options import SAFETY_MODES
from lienzo.pipelines.vision_inputs import clip_pixels

FLAGGED = "flagged NSFW (blacked out)"
PASSED = "passed"
"""The record's `safety_checker` values: the verdict of a checked image (None when no checker ran)."""


class NSFWContentWarning(UserWarning):
    """The safety checker flagged generated images and they were blacked out."""


warnings.filterwarnings("always", category=NSFWContentWarning)
"""Shown on every flagged call, not only the first from a place (a caller's later filter still rules)."""


@dataclass(frozen=True)
class LoadedChecker:
    """A safety checker network with its CLIP image processor settings."""

    model: SafetyChecker
    processor: CLIPProcessorSettings

    def check(self, images: list[Image.Image]) -> list[SafetyScores]:
        """Each image's verdict (CLIP-processed as diffusers' feature extractor does)."""
        pixels = clip_pixels(images, self.processor).to(self.model.device)
        return self.model(pixels)


_LOADED: dict[str, LoadedChecker] = {}
"""Checkers read so far, by model folder."""


def check_safety_mode(mode: str) -> str:
    """The mode, or an InvalidArgumentError naming the valid ones."""
    if mode not in SAFETY_MODES:
        raise InvalidArgumentError(
            f"the safety checker mode must be one of {', '.join(SAFETY_MODES)}, got {mode!r}"
        )
    return mode


def safety_checker_for(pipe, mode: str) -> LoadedChecker | None:
    """The checker `mode` asks for on this Pipeline's model: None when off (auto: when the model folder's
    model_index.json names none); `on` without one is a ModelNotFoundError."""
    check_safety_mode(mode)
    folder = Path(pipe.path) if pipe.path is not None and Path(pipe.path).is_dir() else None
    listed = folder is not None and lists_safety_checker(folder)
    if mode == "off" or (mode == "auto" and not listed):
        return None
    if folder is None:
        raise ModelNotFoundError(
            f"{pipe.name or 'this model'} is not a diffusers folder, so it has no safety checker "
            "(safety_checker/ + feature_extractor/); use a folder that has one or turn the checker off"
        )
    key = str(folder.resolve())
    if key not in _LOADED:
        model, processor = read_safety_checker(folder)
        _LOADED[key] = LoadedChecker(model.to(pipe.device), processor)
    return _LOADED[key]


def apply_safety_checker(pipe, images: list[Image.Image], mode: str = "auto") -> list[SafetyScores]:
    """Check the images in place: each flagged one is painted black (same size and record) and every
    checked image's record gets the verdict; returns the verdicts (empty when no checker runs)."""
    checker = safety_checker_for(pipe, mode)
    if checker is None or not images:
        return []
    with torch.no_grad():
        verdicts = checker.check(images)
    for image, verdict in zip(images, verdicts, strict=True):
        if verdict.flagged:
            image.paste((0, 0, 0), (0, 0, *image.size))
        if "lienzo" in image.info:
            image.info["lienzo"] = {
                **image.info["lienzo"],
                "safety_checker": FLAGGED if verdict.flagged else PASSED,
            }
    flagged = sum(verdict.flagged for verdict in verdicts)
    if flagged:
        warnings.warn(
            f"the safety checker flagged {flagged} of {len(images)} images as NSFW and blacked them out; "
            "try another prompt or seed",
            NSFWContentWarning,
            stacklevel=2,
        )
    return verdicts


def was_flagged(image: Image.Image) -> bool:
    """True when the safety checker blacked this generated image out (its record says so)."""
    return (image.info.get("lienzo") or {}).get("safety_checker") == FLAGGED
