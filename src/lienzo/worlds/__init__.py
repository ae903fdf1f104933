"""Synthetic worlds with exactly known content: the shapes world, its dataset, scorer and evaluation."""

from lienzo.worlds.dataset import ShapesDataConfig, ShapesDataset, caption_corpus
from lienzo.worlds.evaluate import EvalReport, contact_sheet, evaluate, evaluation_prompts
from lienzo.worlds.scorer import ScoreResult, detect_scene, parse_prompt, score
from lienzo.worlds.shapes import Scene, SceneObject, caption, render, sample_scene

__all__ = [
    "EvalReport",
    "Scene",
    "SceneObject",
    "ScoreResult",
    "ShapesDataConfig",
    "ShapesDataset",
    "caption",
    "caption_corpus",
    "contact_sheet",
    "detect_scene",
    "evaluate",
    "evaluation_prompts",
    "parse_prompt",
    "render",
    "sample_scene",
    "score",
]
