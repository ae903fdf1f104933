"""Time a batch of 4 images with a stochastic sampler: the whole batch at once against one item at a time.

Usage: PYTHONPATH=src python bench/stochastic_batch_speed.py --repeats 3
Before the one sampling path, stochastic samplers ran batch items one by one so that item i drew the
noise of seed + i; now every row draws from its own seeded generator and the batch runs at once. The
"one by one" arm reproduces the old behaviour (four batch-1 runs with seeds s..s+3); the "batched" arm is
one batch_size=4 call. Both use the built-in model at default size, `euler_ancestral`, the same settings,
interleaved. Prints the median wall time of each arm, their ratio and the largest pixel difference
between the two arms' images (0-1: the same images up to batch-size rounding).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import lienzo

PROMPT = "a large red circle on the left on a blue background"


def parse_args() -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each arm (interleaved)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps")
    parser.add_argument("--sampler", default="euler_ancestral", help="a stochastic sampler id")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: the machine's")
    return parser.parse_args()


def main() -> None:
    """Run both arms `repeats` times, interleaved, and print the medians and the ratio."""
    args = parse_args()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, None: None}[args.dtype]
    pipe = lienzo.load(dtype=dtype)
    settings = {"sampler": args.sampler, "steps": args.steps, "progress": False}

    def one_by_one() -> list:
        return [pipe.generate(PROMPT, seed=seed, **settings)[0] for seed in range(4)]

    def batched() -> list:
        return pipe.generate(PROMPT, seed=0, batch_size=4, **settings)

    arms = {"one by one": one_by_one, "batched": batched}
    times: dict[str, list[float]] = {name: [] for name in arms}
    images: dict[str, list] = {}
    for arm in arms.values():
        arm()
    for _ in range(args.repeats):
        for name, arm in arms.items():
            start = time.perf_counter()
            images[name] = arm()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    difference = max(
        int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
        for a, b in zip(images["one by one"], images["batched"], strict=True)
    )
    print(f"{args.sampler}, {args.steps} steps, batch of 4, {pipe.dtype}, {torch.get_num_threads()} threads")
    for name, median in medians.items():
        print(f"  {name:>10}: {median:.3f} s (runs: {', '.join(f'{t:.3f}' for t in times[name])})")
    print(f"  batched / one by one: {medians['batched'] / medians['one by one']:.2f}")
    print(f"  largest pixel difference between the arms: {difference}")


if __name__ == "__main__":
    main()
