"""The built-in model's speed at default settings, stage by stage, in one warm process.

Each run is `pipe.generate(PROMPT, seed=...)` at the default settings (20 steps of DPM++ 2M Karras, CFG 7,
128x128) followed by writing the PNG with its parameters, as `lienzo generate` does. Timing wrappers
around the pipeline's own steps split the call into text encoding, sampling (and each sampling step),
VAE decode, conversion to PIL, the image records, the PNG, and the rest (Python around them). Settings
"before" (every torch thread) and "after" (lienzo's default) run interleaved, repeat by repeat, after the
warm-up runs; the table gives each stage's median.

    PYTHONPATH=src python bench/builtin_speed.py --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from lienzo import devices, load, set_cpu_attention
from lienzo.io.library import library_from_config
from lienzo.pipelines import generation, steps
from lienzo.pipelines.metadata import save_png

PROMPT = "a red circle on a blue background"
STAGES = {
    "text encoding": (generation, "encode_texts"),
    "sampling": (generation, "generate_latents"),
    "decode and PIL": (generation, "decode_latents"),
    "to PIL": (steps, "tensor_to_images"),
    "records": (generation, "attach_records"),
}


@contextmanager
def timed_stages(times: dict[str, float]):
    """Wrap each stage's function where the pipeline looks it up; add its time to `times`."""
    originals = {}
    for name, (module, attribute) in STAGES.items():
        function = getattr(module, attribute)
        originals[name] = (module, attribute, function)

        def wrapper(*args, _name=name, _function=function, **kwargs):
            start = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                times[_name] += time.perf_counter() - start

        setattr(module, attribute, wrapper)
    try:
        yield
    finally:
        for module, attribute, function in originals.values():
            setattr(module, attribute, function)


def one_run(pipe, seed: int, folder: Path) -> dict[str, float]:
    """Stage times (seconds) of one generate call and its PNG."""
    times: dict[str, float] = defaultdict(float)
    stamps: list[float] = []
    with timed_stages(times):
        start = time.perf_counter()
        stamps.append(start)
        step = lambda _: stamps.append(time.perf_counter())  # noqa: E731
        image = pipe.generate(PROMPT, seed=seed, progress=False, callback=step)[0]
        generated = time.perf_counter()
    save_png(image, folder / f"{seed}.png", image.info["lienzo"])
    saved = time.perf_counter()
    times["PNG with parameters"] = saved - generated
    times["VAE decode"] = times.pop("decode and PIL") - times["to PIL"]
    inner = sum(times[name] for name in ("text encoding", "sampling", "VAE decode", "to PIL", "records"))
    times["other Python"] = (generated - start) - inner
    times["generate call"] = generated - start
    times["total with PNG"] = saved - start
    step_times = [later - earlier for earlier, later in zip(stamps[1:-1], stamps[2:], strict=True)]
    times["one sampling step (median)"] = statistics.median(step_times) if step_times else float("nan")
    return dict(times)


VARIANTS = {
    "before": "every thread torch has (lienzo.devices.SMALL_CPU_WORK = 0)",
    "after": "lienzo's default: one thread for small CPU work",
    "sdpa": "lienzo's default with PyTorch's attention kernel (--no-cpu-attention)",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", default="before,after", help=f"comma-separated from {list(VARIANTS)}")
    parser.add_argument("--model", help="a checkpoint name or path (default: the default built-in model)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        + "; ".join(f"{name}: {VARIANTS[name]}" for name in variants)
    )
    pipe = load(
        None
        if args.model is None
        else library_from_config(allow_paths=True).resolve("checkpoints", args.model)
    )
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    small_work = devices.SMALL_CPU_WORK
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(-args.warmup, args.repeats):
            for name in variants if repeat % 2 == 0 else variants[::-1]:
                devices.SMALL_CPU_WORK = 0 if name == "before" else small_work
                set_cpu_attention(name != "sdpa")
                result = one_run(pipe, 100 + repeat, Path(folder))
                if repeat >= 0:
                    runs[name].append(result)
    devices.SMALL_CPU_WORK = small_work
    set_cpu_attention(True)
    print("| stage | " + " | ".join(f"{name}, median ms" for name in variants) + " |")
    print("|---" * (len(variants) + 1) + "|")
    for stage in runs[variants[0]][0]:
        cells = [f"{1000 * statistics.median(run[stage] for run in runs[name]):.1f}" for name in variants]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    for name in variants:
        totals = ", ".join(f"{1000 * run['total with PNG']:.0f}" for run in runs[name])
        print(f"{name}, every run's total with PNG (ms): {totals}")
    if len(variants) == 2:
        ratio = statistics.median(run["total with PNG"] for run in runs[variants[1]]) / statistics.median(
            run["total with PNG"] for run in runs[variants[0]]
        )
        print(f"ratio of medians {variants[1]} / {variants[0]}: {ratio:.3f}")


if __name__ == "__main__":
    main()
