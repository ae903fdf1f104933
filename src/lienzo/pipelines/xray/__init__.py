"""The pipeline x-ray: tokens, schedule, trajectory and per-word cross-attention maps of one run."""

from lienzo.pipelines.xray.capture import (
    AttentionCapture,
    MapSettings,
    capture_cross_attention,
    cross_attention_layers,
)
from lienzo.pipelines.xray.run import Schedule, TrajectoryFrame, WordMap, XRay, run_xray
from lienzo.pipelines.xray.tokens import TokenBreakdown, Word, token_breakdown

__all__ = [
    "AttentionCapture",
    "MapSettings",
    "Schedule",
    "TokenBreakdown",
    "TrajectoryFrame",
    "Word",
    "WordMap",
    "XRay",
    "capture_cross_attention",
    "cross_attention_layers",
    "run_xray",
    "token_breakdown",
]
