"""Conditioning nodes: CLIPTextEncode, CLIPSetLastLayer, ConditioningCombine/Concat/SetArea/SetTimestepRange.

CONDITIONING is a list of `PromptCondition`s. Combine joins lists (their predictions are averaged while
sampling), Concat appends the tokens of the first `conditioning_from` entry to each entry, SetArea and
SetTimestepRange restrict where and when the entries apply (see lienzo.diffusion.regions).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.values import ClipModel
from lienzo.pipelines.ksampler import PromptCondition

MAX_RESOLUTION = 16384


def clip_text_encode(context, text: str, clip: ClipModel):
    """Encode a prompt (A1111 weighting syntax, 75-token chunks) with CLIP at its clip skip."""
    encoded = clip.encoders.encode([text], clip_skip=clip.clip_skip)
    pooled = None if encoded.pooled is None else encoded.pooled.float()
    return ([PromptCondition(encoded.context.float(), pooled)],)


def clip_set_last_layer(context, clip: ClipModel, stop_at_clip_layer: int):
    """Stop CLIP at a layer counted from the end (-1 = last, -2 = A1111's clip skip 2)."""
    return (replace(clip, clip_skip=-stop_at_clip_layer),)


def conditioning_combine(context, conditioning_1: list, conditioning_2: list):
    """Both lists as one: their predictions are averaged while sampling."""
    return (list(conditioning_1) + list(conditioning_2),)


def conditioning_concat(context, conditioning_to: list, conditioning_from: list):
    """Each entry of `conditioning_to` with the tokens of the first `conditioning_from` entry appended."""
    source = conditioning_from[0].context
    joined = []
    for entry in conditioning_to:
        tokens = torch.cat(
            [entry.context, source.to(entry.context).expand(entry.context.shape[0], -1, -1)], dim=1
        )
        joined.append(replace(entry, context=tokens))
    return (joined,)


def conditioning_set_area(
    context, conditioning: list, width: int, height: int, x: int, y: int, strength: float
):
    """Restrict every entry to a width x height box at (x, y) pixels, with a weight in the average."""
    return ([replace(entry, area=(height, width, y, x), strength=strength) for entry in conditioning],)


def conditioning_set_timestep_range(context, conditioning: list, start: float, end: float):
    """Apply the entries only from `start` to `end` (fractions of the sampling schedule)."""
    return ([replace(entry, percent_range=(start, end)) for entry in conditioning],)


PIXELS = {"min": 64, "max": MAX_RESOLUTION, "step": 8}
OFFSET = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}

register(
    NodeType(
        "CLIPTextEncode",
        clip_text_encode,
        (Input("text", "STRING", {"multiline": True, "dynamicPrompts": True}), Input("clip", "CLIP")),
        ("CONDITIONING",),
        category="conditioning",
        display_name="CLIP Text Encode (Prompt)",
        description="Encodes a text prompt with CLIP (A1111 prompt weighting) into a conditioning.",
    )
)
register(
    NodeType(
        "CLIPSetLastLayer",
        clip_set_last_layer,
        (
            Input("clip", "CLIP"),
            Input("stop_at_clip_layer", "INT", {"default": -1, "min": -24, "max": -1, "step": 1}),
        ),
        ("CLIP",),
        category="conditioning",
        display_name="CLIP Set Last Layer",
        description="Uses CLIP's output from an earlier layer (A1111's clip skip).",
    )
)
register(
    NodeType(
        "ConditioningCombine",
        conditioning_combine,
        (Input("conditioning_1", "CONDITIONING"), Input("conditioning_2", "CONDITIONING")),
        ("CONDITIONING",),
        category="conditioning",
        display_name="Conditioning (Combine)",
        description="Combines two conditionings: their denoised predictions are averaged.",
    )
)
register(
    NodeType(
        "ConditioningConcat",
        conditioning_concat,
        (Input("conditioning_to", "CONDITIONING"), Input("conditioning_from", "CONDITIONING")),
        ("CONDITIONING",),
        category="conditioning",
        display_name="Conditioning (Concat)",
        description="Appends the tokens of conditioning_from to each entry of conditioning_to.",
    )
)
register(
    NodeType(
        "ConditioningSetArea",
        conditioning_set_area,
        (
            Input("conditioning", "CONDITIONING"),
            Input("width", "INT", {"default": 64, **PIXELS}),
            Input("height", "INT", {"default": 64, **PIXELS}),
            Input("x", "INT", OFFSET),
            Input("y", "INT", OFFSET),
            Input("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
        ),
        ("CONDITIONING",),
        category="conditioning",
        display_name="Conditioning (Set Area)",
        description="Restricts a conditioning to a box of the image (pixels, multiples of 8).",
    )
)
register(
    NodeType(
        "ConditioningSetTimestepRange",
        conditioning_set_timestep_range,
        (
            Input("conditioning", "CONDITIONING"),
            Input("start", "FLOAT", {"default": 0.0, **PERCENT}),
            Input("end", "FLOAT", {"default": 1.0, **PERCENT}),
        ),
        ("CONDITIONING",),
        category="advanced/conditioning",
        display_name="ConditioningSetTimestepRange",
        description="Applies a conditioning only during part of the sampling schedule.",
    )
)
