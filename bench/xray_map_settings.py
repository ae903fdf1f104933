"""Choose the x-ray's map settings on a development set: top-N IoU of word maps for each MapSettings.

The development prompts are one-object shapes-world prompts drawn with another seed than the 50 reported
prompts of bench/xray_attention_iou.py (and tests/test_xray.py), any prompt of the reported set left out,
and generated with other seeds (10 000 + i). Each image is generated once with one capture per
record-time setting (score, first step aggregated; with --start-token, start token kept or dropped) open
together; every combination of layers, layer weighting, upsampling and alignment is then scored from those
captures.
Alignment: where latent cell i sits in the image, "encoder" at pixel 8 i + 7 (the VAE encoder's geometry,
the x-ray's), "decoder" at 8 i + 3.5 (the decoder's nearest-neighbour upsampling); "resize" is a plain
F.interpolate of each grid (align_corners=False), the x-ray's maps before MapSettings.

    python bench/xray_map_settings.py --prompts 30 --steps 20 --start-token
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lienzo.io.atomic import atomic_path
from lienzo.pipelines.pipeline import load
from lienzo.pipelines.steps import model_sampling, schedule_sigmas
from lienzo.pipelines.xray import capture_cross_attention, token_breakdown
from lienzo.pipelines.xray.capture import AttentionCapture, MapSettings, upsample
from lienzo.pipelines.xray.run import xray_options
from lienzo.worlds import evaluation_prompts, parse_prompt
from lienzo.worlds.map_overlap import object_and_background_masks, top_n_iou

DEV_PROMPT_SEED = 1
DEV_IMAGE_SEED = 10_000
REPORTED_PROMPTS = 50
LATER_FRACTIONS = (1.0, 0.5, 0.25)
LAYERS = ((8, "equal"), (1, "equal"), (1, "cells"))
UPSAMPLINGS = ("bilinear", "bicubic")
ALIGNMENTS = {"encoder": None, "decoder": 3.5, "resize": "resize"}
ROLES = ("shape", "colour", "background")


def development_prompts(n: int) -> list[str]:
    """`n` one-object prompts none of which is among the reported prompts."""
    reported = set(evaluation_prompts(REPORTED_PROMPTS, seed=0, kind="single"))
    pool = [p for p in evaluation_prompts(4 * n, seed=DEV_PROMPT_SEED, kind="single") if p not in reported]
    return list(dict.fromkeys(pool))[:n]


def resized_maps(capture: AttentionCapture, height: int, width: int) -> torch.Tensor:
    """The maps as before MapSettings: each kept grid bilinearly resized with align_corners=False."""
    maps = None
    for rows, columns, factor in capture.kept_sizes():
        grid = capture.sums[rows, columns, factor].transpose(0, 1).reshape(1, -1, rows, columns)
        upsampled = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0]
        maps = upsampled if maps is None else maps + upsampled
    return maps / sum(capture.calls[size] for size in capture.kept_sizes())


def aligned_maps(capture: AttentionCapture, height: int, width: int, origin: float | None) -> torch.Tensor:
    """AttentionCapture.token_maps with latent cell 0 centred on pixel `origin` (None: the encoder's)."""
    maps, total = None, 0.0
    for size in capture.kept_sizes():
        rows, columns, factor = size
        weight = rows * columns if capture.settings.layer_weighting == "cells" else 1
        grid = capture.sums[size].transpose(0, 1).reshape(-1, rows, columns)
        mode = capture.settings.upsampling
        upsampled = upsample(grid, factor, (height, width), capture.latent_size, mode, origin)
        maps = weight * upsampled if maps is None else maps + weight * upsampled
        total += weight * capture.calls[size]
    return maps / total


def variants(capture: AttentionCapture):
    """(key, maps) for every combination of layers, upsampling and alignment on one capture."""
    for (side, weighting), upsampling, (alignment, origin) in itertools.product(
        LAYERS, UPSAMPLINGS, ALIGNMENTS.items()
    ):
        settings = replace(
            capture.settings, min_map_side=side, layer_weighting=weighting, upsampling=upsampling
        )
        variant = replace(capture, settings=settings)
        key = (side, weighting, upsampling, alignment)
        if origin != "resize":
            yield key, aligned_maps(variant, 128, 128, origin)
        elif (side, weighting) == LAYERS[0] and upsampling == "bilinear":
            yield key, resized_maps(variant, 128, 128)


def recorded(drops: tuple) -> list[tuple[str, bool]]:
    """(score, drop start token) pairs captured: the start token is dropped from probabilities only."""
    return [("logit", False)] + [("probability", drop) for drop in drops]


def one_prompt(pipe, prompt: str, seed: int, steps: int, drops: tuple) -> tuple[dict, dict]:
    """IoU per role for every settings combination from one generation, and the raw captures (one per
    first step aggregated, score and start-token choice), masks and word positions."""
    options = xray_options(pipe, prompt, {"seed": seed, "steps": steps})
    sigmas = schedule_sigmas(pipe.spec, options)
    timesteps = model_sampling(pipe.spec.schedule).sigma_to_t(sigmas[:-1].double()).tolist()
    with contextlib.ExitStack() as stack:
        captures = {}
        for first, (score, drop) in itertools.product(range(steps), recorded(drops)):
            settings = MapSettings(score=score, drop_start_token=drop)
            limit = math.inf if first == 0 else timesteps[first] + 1e-3
            captures[first, score, drop] = stack.enter_context(
                capture_cross_attention(pipe.unet, (16, 16), settings, limit)
            )
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
    for fraction, (score, drop) in itertools.product(LATER_FRACTIONS, recorded(drops)):
        capture = captures[steps - math.ceil(steps * fraction), score, drop]
        for key, maps in variants(capture):
            results[(score, fraction, drop, *key)] = {
                role: top_n_iou(maps[words[word]].sum(dim=0).numpy(), region)
                for role, (word, region) in targets.items()
            }
    raw = {
        "prompt": prompt,
        "captures": {key: (capture.sums, capture.calls) for key, capture in captures.items()},
        "targets": {
            role: (words[word], torch.from_numpy(region)) for role, (word, region) in targets.items()
        },
    }
    return results, raw


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--start-token", action="store_true", help="also drop the start token's share")
    parser.add_argument("--save", type=Path, help="also save the raw captures, masks and word positions")
    args = parser.parse_args()
    drops = (False, True) if args.start_token else (False,)
    pipe = load(None)
    table: dict[tuple, dict[str, list[float]]] = {}
    saved = []
    start = time.perf_counter()
    for index, prompt in enumerate(development_prompts(args.prompts)):
        print(f"{index + 1}/{args.prompts} {prompt}", file=sys.stderr, flush=True)
        results, raw = one_prompt(pipe, prompt, DEV_IMAGE_SEED + index, args.steps, drops)
        saved.append(raw)
        for key, ious in results.items():
            for role, value in ious.items():
                table.setdefault(key, {r: [] for r in ROLES})[role].append(value)
    elapsed = time.perf_counter() - start
    if args.save is not None:
        with atomic_path(args.save) as temporary:
            torch.save(saved, temporary)
    print(f"development set: {args.prompts} prompts, {args.steps} steps, {elapsed:.0f} s")
    columns = (
        "score",
        "later fraction",
        "drop start",
        "min side",
        "weighting",
        "upsampling",
        "alignment",
        *ROLES,
    )
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for key, ious in sorted(table.items(), key=lambda item: -np.mean(item[1]["shape"])):
        means = " | ".join(f"{np.mean(ious[role]):.3f}" for role in ROLES)
        print("| " + " | ".join(str(part) for part in key) + f" | {means} |")


if __name__ == "__main__":
    main()
