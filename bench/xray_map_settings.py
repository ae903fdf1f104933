"""Choose the x-ray's map settings on a development set: top-N IoU of word maps for each MapSettings.

The development prompts are one-object shapes-world prompts drawn with another seed than the 50 reported
prompts of bench/xray_attention_iou.py (and tests/test_xray.py), any prompt of the reported set left out,
and generated with other seeds (10 000 + i). Each image is generated once with one capture per
record-time setting (steps aggregated, start token kept or dropped) open together; every combination of
layers, layer weighting and upsampling is then scored from those captures. "centred" is the upsampling
before the cell-centre alignment (F.interpolate, align_corners=False), kept here for comparison.

    python bench/xray_map_settings.py --prompts 30 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from lienzo.pipelines.pipeline import load
from lienzo.pipelines.steps import model_sampling, schedule_sigmas
from lienzo.pipelines.xray import capture_cross_attention, token_breakdown
from lienzo.pipelines.xray.capture import AttentionCapture, MapSettings
from lienzo.pipelines.xray.run import xray_options
from lienzo.worlds import evaluation_prompts, parse_prompt
from lienzo.worlds.map_overlap import object_and_background_masks, top_n_iou

DEV_PROMPT_SEED = 1
DEV_IMAGE_SEED = 10_000
REPORTED_PROMPTS = 50
LATER_FRACTIONS = (1.0, 0.5, 0.25)
LAYERS = ((8, "equal"), (1, "equal"), (1, "cells"))
UPSAMPLINGS = ("bilinear", "bicubic", "centred")
ROLES = ("shape", "colour", "background")


def development_prompts(n: int) -> list[str]:
    """`n` one-object prompts none of which is among the reported prompts."""
    reported = set(evaluation_prompts(REPORTED_PROMPTS, seed=0, kind="single"))
    pool = [p for p in evaluation_prompts(4 * n, seed=DEV_PROMPT_SEED, kind="single") if p not in reported]
    return list(dict.fromkeys(pool))[:n]


def centred_maps(capture: AttentionCapture, height: int, width: int) -> torch.Tensor:
    """The maps as before the alignment: each kept grid bilinearly resized with align_corners=False."""
    maps = None
    for rows, columns, factor in capture.kept_sizes():
        grid = capture.sums[rows, columns, factor].transpose(0, 1).reshape(1, -1, rows, columns)
        upsampled = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0]
        maps = upsampled if maps is None else maps + upsampled
    return maps / sum(capture.calls[size] for size in capture.kept_sizes())


def one_prompt(pipe, prompt: str, seed: int, steps: int) -> dict[tuple, dict[str, float]]:
    """IoU per role for every settings combination, from one generation."""
    options = xray_options(pipe, prompt, {"seed": seed, "steps": steps})
    sigmas = schedule_sigmas(pipe.spec, options)
    timesteps = model_sampling(pipe.spec.schedule).sigma_to_t(sigmas[:-1].double()).tolist()
    recorded = list(itertools.product(LATER_FRACTIONS, (False, True)))
    with contextlib.ExitStack() as stack:
        captures = {}
        for fraction, drop in recorded:
            settings = MapSettings(later_fraction=fraction, drop_start_token=drop)
            context = capture_cross_attention(pipe.unet, (16, 16), settings, settings.max_timestep(timesteps))
            captures[fraction, drop] = stack.enter_context(context)
        (image,) = pipe.generate(prompt=prompt, seed=seed, steps=steps, progress=False)
    expected = parse_prompt(prompt)
    obj, background = object_and_background_masks(image)
    words = {w.text.lower(): list(w.positions) for w in token_breakdown(prompt, pipe.clip).words}
    targets = {
        "shape": (expected.objects[0].shape, obj),
        "colour": (expected.objects[0].colour, obj),
        "background": ("background", background),
    }
    results = {}
    for (fraction, drop), capture in captures.items():
        for (side, weighting), upsampling in itertools.product(LAYERS, UPSAMPLINGS):
            if upsampling == "centred" and (side, weighting) != LAYERS[0]:
                continue
            mode = "bilinear" if upsampling == "centred" else upsampling
            settings = replace(
                capture.settings, min_map_side=side, layer_weighting=weighting, upsampling=mode
            )
            variant = replace(capture, settings=settings)
            maps = (
                centred_maps(variant, 128, 128) if upsampling == "centred" else variant.token_maps(128, 128)
            )
            key = (fraction, drop, side, weighting, upsampling)
            results[key] = {
                role: top_n_iou(maps[words[word]].sum(dim=0).numpy(), region)
                for role, (word, region) in targets.items()
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    pipe = load(None)
    table: dict[tuple, dict[str, list[float]]] = {}
    start = time.perf_counter()
    for index, prompt in enumerate(development_prompts(args.prompts)):
        for key, ious in one_prompt(pipe, prompt, DEV_IMAGE_SEED + index, args.steps).items():
            for role, value in ious.items():
                table.setdefault(key, {r: [] for r in ROLES})[role].append(value)
    elapsed = time.perf_counter() - start
    print(f"development set: {args.prompts} prompts, {args.steps} steps, {elapsed:.0f} s")
    print("| later fraction | drop start | min side | weighting | upsampling | shape | colour | background |")
    print("|---|---|---|---|---|---|---|---|")
    for key, ious in sorted(table.items(), key=lambda item: -np.mean(item[1]["shape"])):
        means = " | ".join(f"{np.mean(ious[role]):.3f}" for role in ROLES)
        print("| " + " | ".join(str(part) for part in key) + f" | {means} |")


if __name__ == "__main__":
    main()
