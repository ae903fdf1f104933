"""Are the x-ray's word maps right? Top-N IoU of word maps with the generated image's regions.

For one-object shapes-world prompts on the built-in model: the shape word's and the colour word's maps,
each cut to its N highest pixels (N = the object's area in the generated image, read as the scorer reads
it), against the object; the maps of "background" and of the background's colour word against the
background. Prints a Markdown table and writes a figure of the first prompts.

    python bench/xray_attention_iou.py --prompts 50 --steps 20 --figure docs/images/xray-iou.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lienzo.io.atomic import atomic_path
from lienzo.pipelines.pipeline import load
from lienzo.pipelines.xray import run_xray
from lienzo.pipelines.xray.capture import LAYER_WEIGHTINGS, SCORES, UPSAMPLINGS, MapSettings
from lienzo.worlds import evaluation_prompts, parse_prompt, score
from lienzo.worlds.map_overlap import object_and_background_masks, top_n_iou

ROLES = ("shape", "colour", "background", "background colour")
FIGURE_ROWS = 6
LABELS = {"background colour": "bg colour"}
"""Shorter captions where the role's name and IoU would not fit under a 128-pixel map."""


def word_ious(
    pipe, prompt: str, seed: int, steps: int, settings: MapSettings
) -> tuple[dict[str, float], list, bool]:
    """IoU per role for one prompt, the pictures for the figure, and whether the scorer matched the image."""
    expected = parse_prompt(prompt)
    target = expected.objects[0]
    xray = run_xray(pipe, prompt, seed=seed, steps=steps, every=steps, map_settings=settings)
    obj, background = object_and_background_masks(xray.image)
    words = {
        "shape": (target.shape, obj),
        "colour": (target.colour, obj),
        "background": ("background", background),
        "background colour": (expected.background, background),
    }
    ious = {role: top_n_iou(xray.word_map(word).values, region) for role, (word, region) in words.items()}
    pictures = [xray.image] + [xray.word_map(word).image().convert("RGB") for word, _ in words.values()]
    return ious, pictures, score(prompt, xray.image).matched


def figure(rows: list[tuple[str, list, dict]], path: Path) -> None:
    """Rows of image | shape map | colour map | background map | background-colour map, with IoUs."""
    font = ImageFont.load_default(size=12)
    size, band = rows[0][1][0].width, 16
    sheet = Image.new("RGB", (size * 5, (size + 2 * band) * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for index, (prompt, pictures, ious) in enumerate(rows):
        top = index * (size + 2 * band)
        draw.text((2, top + 1), prompt, fill=(0, 0, 0), font=font)
        for column, picture in enumerate(pictures):
            sheet.paste(picture, (column * size, top + band))
            if column:
                role = ROLES[column - 1]
                draw.text(
                    (column * size + 2, top + band + size + 1),
                    f"{LABELS.get(role, role)} {ious[role]:.2f}",
                    fill=(0, 0, 0),
                    font=font,
                )
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20)
    defaults = MapSettings()
    parser.add_argument("--score", choices=SCORES, default=defaults.score)
    parser.add_argument("--min-map-side", type=int, default=defaults.min_map_side, help="1 = every layer")
    parser.add_argument("--layer-weighting", choices=LAYER_WEIGHTINGS, default=defaults.layer_weighting)
    parser.add_argument("--later-fraction", type=float, default=defaults.later_fraction)
    parser.add_argument(
        "--drop-start-token", action=argparse.BooleanOptionalAction, default=defaults.drop_start_token
    )
    parser.add_argument("--upsampling", choices=UPSAMPLINGS, default=defaults.upsampling)
    parser.add_argument("--figure", type=Path, help="write the first rows as a PNG figure")
    args = parser.parse_args()
    settings = MapSettings(
        score=args.score,
        min_map_side=args.min_map_side,
        layer_weighting=args.layer_weighting,
        later_fraction=args.later_fraction,
        drop_start_token=args.drop_start_token,
        upsampling=args.upsampling,
    )
    pipe = load(None)
    results, rows, matched = {role: [] for role in ROLES}, [], 0
    start = time.perf_counter()
    for seed, prompt in enumerate(evaluation_prompts(args.prompts, seed=0, kind="single")):
        ious, pictures, ok = word_ious(pipe, prompt, seed, args.steps, settings)
        matched += ok
        for role in ROLES:
            results[role].append(ious[role])
        if len(rows) < FIGURE_ROWS:
            rows.append((prompt, pictures, ious))
    elapsed = time.perf_counter() - start
    print(
        f"{args.prompts} prompts, {args.steps} steps, {settings}, {elapsed:.0f} s; "
        f"scorer matched {matched}/{args.prompts}"
    )
    print("| word | region | mean IoU | median | min | share >= 0.5 |")
    print("|---|---|---|---|---|---|")
    for role in ROLES:
        values = np.array(results[role])
        region = "object" if role in ("shape", "colour") else "background"
        print(
            f"| {role} | {region} | {values.mean():.3f} | {np.median(values):.3f} | {values.min():.3f} | "
            f"{(values >= 0.5).mean():.2f} |"
        )
    if args.figure is not None:
        figure(rows, args.figure)


if __name__ == "__main__":
    main()
