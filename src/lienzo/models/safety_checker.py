"""The Stable Diffusion safety checker (CompVis/diffusers `StableDiffusionSafetyChecker`): CLIP image
embeddings compared by cosine similarity with fixed concept embeddings against per-concept thresholds.

An image is flagged when any concept's score cos - threshold (+ 0.01 once a "special care" concept has
matched), rounded to 3 decimals as diffusers rounds it, is above zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lienzo.models.clip_vision import CLIPVisionConfig, CLIPVisionModel

SPECIAL_CARE_ADJUSTMENT = 0.01
"""What a matched special-care concept adds to the scores after it (diffusers' `adjustment`)."""


@dataclass(frozen=True)
class SafetyCheckerConfig:
    """The CLIP image tower, the projection width and the number of concepts of each kind."""

    vision: CLIPVisionConfig = CLIPVisionConfig()
    projection_dim: int = 768
    concepts: int = 17
    special_care_concepts: int = 3


@dataclass(frozen=True)
class SafetyScores:
    """One image's verdict: flagged or not, and the rounded scores (above 0 = matched) per concept."""

    flagged: bool
    concept_scores: tuple[float, ...]
    special_scores: tuple[float, ...]


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """(N, M) cosine similarities of the rows of a (N, D) and b (M, D)."""
    return F.normalize(a) @ F.normalize(b).T


class SafetyChecker(nn.Module):
    """CLIP vision tower, visual projection, concept embeddings and their thresholds (diffusers' keys)."""

    def __init__(self, config: SafetyCheckerConfig):
        super().__init__()
        self.config = config
        self.vision_model = CLIPVisionModel(config.vision)
        self.visual_projection = nn.Linear(config.vision.hidden_size, config.projection_dim, bias=False)
        self.concept_embeds = nn.Parameter(torch.ones(config.concepts, config.projection_dim))
        self.special_care_embeds = nn.Parameter(
            torch.ones(config.special_care_concepts, config.projection_dim)
        )
        self.concept_embeds_weights = nn.Parameter(torch.ones(config.concepts))
        self.special_care_embeds_weights = nn.Parameter(torch.ones(config.special_care_concepts))

    @property
    def device(self) -> torch.device:
        return self.visual_projection.weight.device

    def similarities(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """(concept, special-care) cosine similarities of CLIP-processed pixels (B, 3, H, W), float32 CPU."""
        embeds = self.visual_projection(self.vision_model(pixels))
        concepts = cosine_similarity(embeds, self.concept_embeds)
        special = cosine_similarity(embeds, self.special_care_embeds)
        return concepts.float().cpu(), special.float().cpu()

    def forward(self, pixels: Tensor) -> list[SafetyScores]:
        """Each image's verdict, computed in float32 exactly as diffusers' checker does."""
        with torch.no_grad():
            concepts, special = self.similarities(pixels)
        concept_thresholds = self.concept_embeds_weights.detach().float().cpu().numpy()
        special_thresholds = self.special_care_embeds_weights.detach().float().cpu().numpy()
        return [
            score_image(row, special_row, concept_thresholds, special_thresholds)
            for row, special_row in zip(concepts.numpy(), special.numpy(), strict=True)
        ]


def score_image(
    concepts: np.ndarray, special: np.ndarray, concept_thresholds: np.ndarray, special_thresholds: np.ndarray
) -> SafetyScores:
    """One image's scores: special-care concepts first, each match raising the later scores."""
    adjustment = np.float32(0.0)
    special_scores = []
    for similarity, threshold in zip(special, special_thresholds, strict=True):
        score = np.round(similarity - threshold + adjustment, 3)
        special_scores.append(float(score))
        if score > 0:
            adjustment = np.float32(SPECIAL_CARE_ADJUSTMENT)
    concept_scores = [
        float(np.round(similarity - threshold + adjustment, 3))
        for similarity, threshold in zip(concepts, concept_thresholds, strict=True)
    ]
    return SafetyScores(
        any(score > 0 for score in concept_scores), tuple(concept_scores), tuple(special_scores)
    )
