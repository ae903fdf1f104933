"""A diffusers folder's safety checker: `safety_checker/` (a CLIPConfig config.json and the weights of
`StableDiffusionSafetyChecker`) and `feature_extractor/` (CLIPImageProcessor settings)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from lienzo.errors import CorruptCheckpointError, ModelNotFoundError
from lienzo.io.detect import read_json
from lienzo.io.dpt_files import TRANSFORMERS_WEIGHT_FILES, weight_file
from lienzo.io.formats import read_state_dict
from lienzo.io.image_processor_files import PROCESSOR_CONFIG, CLIPProcessorSettings, read_clip_processor
from lienzo.models.clip_vision import CLIPVisionConfig
from lienzo.models.safety_checker import SafetyChecker, SafetyCheckerConfig

CHECKER_FOLDER = "safety_checker"
PROCESSOR_FOLDER = "feature_extractor"
UNUSED_KEYS = ("vision_model.vision_model.embeddings.position_ids",)
"""Buffers older transformers versions saved and the checker does not need."""


def lists_safety_checker(model_folder: Path) -> bool:
    """True when a diffusers folder's model_index.json names a safety checker (diffusers then loads one)."""
    index = Path(model_folder) / "model_index.json"
    if not index.is_file():
        return False
    entry = read_json(index).get(CHECKER_FOLDER)
    return isinstance(entry, list) and any(part is not None for part in entry)


def vision_config_from_clip(config: dict) -> CLIPVisionConfig:
    """The vision tower of a transformers CLIPConfig (`vision_config`, else the older `vision_config_dict`);
    fields it leaves out take transformers' CLIPVisionConfig defaults."""
    vision = config.get("vision_config") or config.get("vision_config_dict") or {}
    names = {field.name for field in fields(CLIPVisionConfig)}
    return CLIPVisionConfig(**{name: vision[name] for name in names if vision.get(name) is not None})


def canonical_checker_keys(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checker's weights under diffusers' released keys (`vision_model.vision_model.*`): transformers 5
    saves the vision tower one level flatter (`vision_model.*`); unused buffers are dropped."""
    inner = "vision_model.vision_model."
    canonical = {}
    for key, value in weights.items():
        if key.startswith("vision_model.") and not key.startswith(inner):
            key = inner + key.removeprefix("vision_model.")
        if key not in UNUSED_KEYS:
            canonical[key] = value
    return canonical


def read_safety_checker(model_folder: Path) -> tuple[SafetyChecker, CLIPProcessorSettings]:
    """The checker network (CPU, float32, eval) and its image processor settings from a diffusers folder."""
    folder = Path(model_folder) / CHECKER_FOLDER
    processor = Path(model_folder) / PROCESSOR_FOLDER
    path = weight_file(folder)
    if path is None or not (folder / "config.json").is_file() or not (processor / PROCESSOR_CONFIG).is_file():
        raise ModelNotFoundError(
            f"{model_folder} has no complete safety checker: it needs {CHECKER_FOLDER}/config.json, "
            f"{CHECKER_FOLDER}/{' or '.join(TRANSFORMERS_WEIGHT_FILES)} and "
            f"{PROCESSOR_FOLDER}/{PROCESSOR_CONFIG} (from the model's diffusers release); restore them, or "
            "turn the checker off (--safety-checker off, safety_checker='off')"
        )
    config = read_json(folder / "config.json")
    weights = canonical_checker_keys(read_state_dict(path))
    for key in ("concept_embeds", "special_care_embeds", "visual_projection.weight"):
        if key not in weights:
            raise CorruptCheckpointError(f"{path} has no {key}; it is not a Stable Diffusion safety checker")
    checker_config = SafetyCheckerConfig(
        vision=vision_config_from_clip(config),
        projection_dim=weights["visual_projection.weight"].shape[0],
        concepts=weights["concept_embeds"].shape[0],
        special_care_concepts=weights["special_care_embeds"].shape[0],
    )
    with torch.device("meta"):
        model = SafetyChecker(checker_config)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()[:160]
        raise CorruptCheckpointError(
            f"{path} does not fit its config.json ({first}); re-download the safety checker"
        ) from None
    if missing or unexpected:
        raise CorruptCheckpointError(
            f"{path} does not fit its config.json (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "re-download the safety checker"
        )
    return model.float().eval().requires_grad_(False), read_clip_processor(processor)
