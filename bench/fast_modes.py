"""The opt-in fast modes measured for speed and quality, two ways, in one process with the modes interleaved.

1. The built-in model: the shapes scorer's accuracy (`lienzo eval shapes`' prompt sets and scorer,
   prompt k drawn with seed k) with each mode against the exact path, and the median time per image.
2. SD 1.5 architecture with seeded random weights (CLIP-L, UNet, VAE; bf16, channels_last): the mean
   absolute pixel difference (0-255) of each mode's image to the exact path's, and the time per image.

Same seeds and settings on both sides; within a round the modes run in turn, the order reversed every
other round. Times are medians; the speed-up is exact / mode.

    PYTHONPATH=src python bench/fast_modes.py --prompts 33 --sd15-repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from lienzo import Pipeline, load
from lienzo.models.clip import CLIPTextModel
from lienzo.models.specs import SD1
from lienzo.models.unet import UNetModel
from lienzo.models.vae import AutoencoderKL
from lienzo.pipelines.fast_modes import FastModes
from lienzo.text.tokenizer import CLIPTokenizer
from lienzo.worlds.evaluate import CATEGORIES, evaluate, evaluation_prompts

MODES = {
    "exact": FastModes(),
    "--cfg-cutoff 0.5": FastModes(cfg_cutoff=0.5),
    "--deepcache 2": FastModes(deepcache=2),
    "--deepcache 3": FastModes(deepcache=3),
    "--tome 0.5": FastModes(tome=0.5),
    "all three (0.5, 3, 0.5)": FastModes(cfg_cutoff=0.5, deepcache=3, tome=0.5),
}
SD15_PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def rounds(count: int):
    """(round, mode names in this round's order): all modes each round, reversed every other one."""
    names = list(MODES)
    for index in range(count):
        yield index, names if index % 2 == 0 else names[::-1]


def shapes_table(prompts_per_category: int, seed: int) -> None:
    """Accuracy of every mode on the built-in model, against the exact path, with times per image."""
    pipe = load()
    prompts = [p for kind in CATEGORIES for p in evaluation_prompts(prompts_per_category, seed, kind)]
    images = {name: [] for name in MODES}
    times = {name: [] for name in MODES}
    for index, order in rounds(len(prompts)):
        for name in order:
            start = time.perf_counter()
            image = pipe.generate(prompts[index], seed=seed + index, progress=False, fast=MODES[name])[0]
            times[name].append(time.perf_counter() - start)
            images[name].append(image)
    exact_time = statistics.median(times["exact"])
    indices = range(len(prompts))
    reports = {
        name: evaluate(lambda _prompt, index, made=images[name]: made[index], prompts, indices)
        for name in MODES
    }
    exact = reports["exact"].accuracy()
    print(f"\nBuilt-in model, {len(prompts)} prompts ({prompts_per_category} per category), default settings")
    print("| mode | matched | drop (points) | " + " | ".join(CATEGORIES) + " | median s/image | speed-up |")
    print("|---" * (5 + len(CATEGORIES)) + "|")
    for name, report in reports.items():
        accuracy = report.accuracy()
        per_category = " | ".join(f"{report.accuracy(category):.1%}" for category in CATEGORIES)
        median = statistics.median(times[name])
        print(
            f"| {name} | {accuracy:.1%} | {100 * (exact - accuracy):+.1f} | {per_category} | "
            f"{median:.3f} | {exact_time / median:.2f}x |"
        )


def random_sd15(dtype: torch.dtype) -> Pipeline:
    """An SD 1.5-architecture Pipeline with seeded random weights, channels_last UNet and VAE."""
    torch.manual_seed(0)
    (tower,) = SD1.text_encoders
    unet = UNetModel(SD1.unet).to(dtype=dtype, memory_format=torch.channels_last)
    vae = AutoencoderKL(SD1.vae).to(dtype=dtype, memory_format=torch.channels_last)
    text = CLIPTextModel(tower.config).to(dtype=dtype)
    networks = (unet, vae, text)
    for network in networks:
        network.eval().requires_grad_(False)
    return Pipeline(
        SD1, unet, vae, [text], [CLIPTokenizer.from_bundled(pad_token=tower.pad_token)], "sd15-random"
    )


def sd15_table(repeats: int, size: int, steps: int) -> None:
    """Each mode's mean absolute difference to the exact image and its time, SD 1.5 with random weights."""
    pipe = random_sd15(torch.bfloat16)
    settings = {"width": size, "height": size, "steps": steps, "seed": 1, "progress": False}
    pixels, times = {}, {name: [] for name in MODES}
    for _, order in rounds(repeats):
        for name in order:
            start = time.perf_counter()
            image = pipe.generate(SD15_PROMPT, fast=MODES[name], **settings)[0]
            times[name].append(time.perf_counter() - start)
            pixels[name] = np.asarray(image, dtype=np.float64)
            print(f"  {name}: {times[name][-1]:.1f} s", flush=True)
    exact_time = statistics.median(times["exact"])
    print(f"\nSD 1.5 architecture, random weights, {size}x{size}, {steps} steps, bf16, {repeats} round(s)")
    print("| mode | mean abs. difference to exact (0-255) | max | median s/image | speed-up | runs (s) |")
    print("|---|---|---|---|---|---|")
    for name in MODES:
        difference = np.abs(pixels[name] - pixels["exact"])
        median = statistics.median(times[name])
        runs = ", ".join(f"{value:.1f}" for value in times[name])
        print(
            f"| {name} | {difference.mean():.2f} | {difference.max():.0f} | {median:.1f} | "
            f"{exact_time / median:.2f}x | {runs} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--prompts", type=int, default=33, help="built-in model: prompts per category (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt sets and of the first image")
    parser.add_argument("--sd15-repeats", type=int, default=1, help="SD 1.5 rounds (0: skip)")
    parser.add_argument("--size", type=int, default=512, help="SD 1.5 image size")
    parser.add_argument("--steps", type=int, default=20, help="SD 1.5 steps")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.prompts > 0:
        shapes_table(args.prompts, args.seed)
    if args.sd15_repeats > 0:
        sd15_table(args.sd15_repeats, args.size, args.steps)


if __name__ == "__main__":
    main()
