"""Denoising-step throughput (it/s) of the SD 1.5 and SDXL UNets in lienzo and diffusers on a GPU, same
weights, same run, eager and torch.compile'd, under a hard time budget.

One step is what the A1111 / ComfyUI progress bar counts: one UNet forward on the CFG batch (cond and
uncond rows, 2 for one image) at 64x64 latents (SD 1.5, 512x512) or 128x128 (SDXL, 1024x1024, with the
pooled text embedding and size/crop ids; lienzo's vector y is made once per image, as its sampler does,
diffusers embeds the ids inside every step, as its pipeline does). Random seeded weights, identical in
both libraries; fp16 (--dtype bf16), channels_last, SDPA attention in both, cuDNN autotuning on. After
warm-up, each round times --steps back-to-back steps between torch.cuda.synchronize calls; rounds
interleave the libraries (order alternating); the table gives median it/s, every round, the first
call's seconds of a compiled variant (compiling), lienzo / diffusers of the medians (above 1 = lienzo
faster) and the largest output difference. Compiled variants: lienzo through `Pipeline.compile()`'s
path (lienzo.pipelines.compiling), diffusers through torch.compile(unet, mode=..., fullgraph=True) as
its docs show; "reduce-overhead" adds CUDA graphs. Before each variant the clock is checked against
--budget: a variant whose estimate (ESTIMATES, scaled up when earlier variants took longer than theirs)
would not fit is skipped and the table says so; one still running --grace seconds past the budget is
cut off (exit status 3). The table goes to stdout and, rewritten after every variant, to --out.

On a GPU machine with network access, from the repository root:
  pip install -c <(python -c 'import torch; print("torch==" + torch.__version__)') -e '.[test]'
  python bench/gpu_speed.py --out gpu_speed.md

On the lent device machine (no network; torch, Triton and lienzo's runtime packages are there, diffusers
is not), first, here, in the repository root, fetch diffusers and the two packages it lacks there:
  echo /.whl/ >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d .whl diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer==0.1.0
then one run call, carry [".whl"], timeout_s 540 (the default --budget 400 s of measuring, plus start):
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
    export PYTHONPATH=src:/tmp/site PYTHONUNBUFFERED=1 && nvidia-smi -L && \
    python3 bench/gpu_speed.py --out $OUT/gpu_speed.md

Smoke test on the CPU (tiny UNets of tests/tiny_models.py, no compiling unless --compile):
  PYTHONPATH=src:tests python bench/gpu_speed.py --device cpu --tiny --steps 2 --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import shlex
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from gpu_speed_cases import ESTIMATES, VARIANTS, Case, Variant, case_for, step_functions
from same_weights import diffusers_version, interleaved_rounds, same_weight_unets

from lienzo.devices import DTYPES
from lienzo.io.atomic import atomic_path


@dataclass(frozen=True)
class Row:
    """One library's figures in one variant, or a variant skipped or failed (`note`)."""

    model: str
    variant: Variant
    library: str
    runs: tuple[float, ...] = ()
    first_call_s: float | None = None
    ratio: float | None = None
    max_difference: str = ""
    note: str = ""

    @property
    def median(self) -> float:
        """Median it/s over the rounds."""
        return statistics.median(self.runs)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="default: fp16, fp32 on cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny UNets of tests/tiny_models.py (smoke test)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--compile", action="store_true", help="also compile on cpu (cuda always does)")
    parser.add_argument("--batch", type=int, default=1, help="images per step; the UNet batch is twice this")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per library (interleaved)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per library first")
    parser.add_argument(
        "--budget", type=float, default=400.0, help="seconds; variants that would not fit are skipped"
    )
    parser.add_argument(
        "--grace", type=float, default=60.0, help="seconds past --budget before a running variant is cut off"
    )
    parser.add_argument("--no-diffusers", action="store_true", help="measure lienzo alone")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    return parser.parse_args(argv)


class Budget:
    """The clock against --budget: a variant fits when its estimate, times the largest overrun factor seen
    so far (measured / estimated, at least 1), fits in the seconds left."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()
        self.scale = 1.0

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def needs(self, estimate: float) -> float:
        return estimate * self.scale

    def record(self, estimate: float, seconds: float) -> None:
        self.scale = max(self.scale, seconds / estimate)


def skip_reason(variant: Variant, args: argparse.Namespace, budget: Budget, estimate: float) -> str | None:
    """Why `variant` is not run here, or None."""
    device = torch.device(args.device)
    if variant.mode == "reduce-overhead" and device.type != "cuda":
        return "skipped: CUDA graphs need a CUDA device"
    if variant.mode is not None and device.type == "cpu" and not args.compile:
        return "skipped: no compiling on cpu without --compile"
    needed = budget.needs(estimate)
    if needed > budget.left():
        return f"skipped: needs about {needed:.0f} s, {max(budget.left(), 0):.0f} s of --budget left"
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    """Free the previous case's networks before building the next (an H100 holds both, but not needlessly)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_variant(variant: Variant, case: Case, networks: dict, args: argparse.Namespace) -> list[Row]:
    """Warm up, then time interleaved rounds of every library's step function; one Row per library."""
    device = torch.device(args.device)
    steps, restore = step_functions(case, networks, variant.mode, args.batch, device)
    try:
        first_call: dict[str, float | None] = {}
        outputs = {}
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            outputs[name] = step().float().clone()
            synchronize(device)
            first_call[name] = time.perf_counter() - start if variant.mode is not None else None
            for _ in range(args.warmup):
                step()
            synchronize(device)

        def rate(step) -> float:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            synchronize(device)
            return args.steps / (time.perf_counter() - start)

        runs = interleaved_rounds(
            {name: lambda step=step: rate(step) for name, step in steps.items()}, args.repeats
        )
    finally:
        restore()
    difference = ""
    if "diffusers" in outputs:
        gap = (outputs["lienzo"] - outputs["diffusers"]).abs().max().item()
        difference = f"{gap:.3g} (output scale {outputs['diffusers'].abs().max().item():.3g})"
    rows = [Row(case.label, variant, name, tuple(runs[name]), first_call[name]) for name in steps]
    if len(rows) == 2:
        ratio = rows[0].median / rows[1].median
        rows[0] = replace(rows[0], ratio=ratio, max_difference=difference)
    return rows


def first_line(error: Exception) -> str:
    """The error message's first line, short and without table separators."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else "")[:200].replace("|", "/")


def format_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


def report(rows: list[Row], header: list[str]) -> str:
    """The markdown report: header lines, then the table."""
    lines = [*header, ""]
    lines.append(
        "| model | variant | library | it/s (median) | rounds (it/s) | first call (compiling) | "
        "lienzo ÷ diffusers it/s | max output difference |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row.note:
            lines.append(f"| {row.model} | {row.variant.label} | {row.library} | {row.note} | | | | |")
            continue
        rounds = ", ".join(f"{value:.2f}" for value in row.runs)
        ratio = "" if row.ratio is None else f"**{row.ratio:.3f}**"
        lines.append(
            f"| {row.model} | {row.variant.label} | {row.library} | {row.median:.2f} | {rounds} | "
            f"{format_seconds(row.first_call_s)} | {ratio} | {row.max_difference} |"
        )
    return "\n".join(lines) + "\n"


def write_report(text: str, out: Path | None) -> None:
    if out is None:
        return
    with atomic_path(out) as temporary:
        temporary.write_text(text, encoding="utf-8")


def header_lines(
    args: argparse.Namespace, argv: Sequence[str], dtype: torch.dtype, reference: str | None
) -> list[str]:
    """Date, machine, versions, settings and the command line."""
    device = torch.device(args.device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    versions = f"torch {torch.__version__}, " + (f"diffusers {reference}" if reference else "no diffusers")
    absent = (
        [] if reference or args.no_diffusers else ["diffusers cannot be imported: lienzo measured alone."]
    )
    return [
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        f"Machine: {machine}; {versions}.",
        f"Settings: {str(dtype).removeprefix('torch.')}, channels_last, batch {args.batch} (UNet batch "
        f"{2 * args.batch}, CFG), {args.warmup} warm-up steps, {args.repeats} rounds of {args.steps} steps"
        + (", tiny UNets (smoke test)" if args.tiny else "")
        + ".",
        *absent,
        "",
        "```",
        shlex.join(["python", "bench/gpu_speed.py", *argv]),
        "```",
    ]


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Measure the chosen variants (see the module docstring); returns the report's rows."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: pass --device cpu (with --tiny for a smoke test)")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    reference, why_not = (None, "") if args.no_diffusers else diffusers_version()
    if reference is None and not args.no_diffusers:
        print(f"diffusers cannot be imported ({why_not}): measuring lienzo alone", flush=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    threads = torch.get_num_threads()
    if device.type == "cpu" and args.tiny:
        torch.set_num_threads(1)  # tiny CPU networks wait on a second thread longer than they work
    try:
        return run_variants(args, argv, dtype, reference)
    finally:
        torch.set_num_threads(threads)


class Session:
    """The variants of one run: its rows so far, the networks of the current case, the report after each."""

    def __init__(self, args: argparse.Namespace, argv: list[str], dtype: torch.dtype, reference: str | None):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = dtype
        self.reference = reference
        self.header = header_lines(args, argv, dtype, reference)
        self.cases = {VARIANTS[name].case: case_for(VARIANTS[name].case, args.tiny) for name in args.variants}
        self.rows: list[Row] = []
        self.built: dict[str, dict] = {}
        self.running: Variant | None = None

    def networks(self, case_name: str) -> dict:
        """The case's UNets by library, built on first use; the previous case's are released first."""
        if case_name not in self.built:
            self.built.clear()
            release_memory(self.device)
            ours, other = same_weight_unets(
                self.cases[case_name].config,
                device=self.device,
                dtype=self.dtype,
                with_diffusers=self.reference is not None,
            )
            self.built[case_name] = {"lienzo": ours} | ({"diffusers": other} if other is not None else {})
        return self.built[case_name]

    def run(self, name: str) -> str | None:
        """Measure one variant and add its rows; the reason when it failed."""
        variant = VARIANTS[name]
        self.running = variant
        try:
            networks = self.networks(variant.case)
            with torch.inference_mode():
                measured = measure_variant(variant, self.cases[variant.case], networks, self.args)
        except Exception as error:  # one variant's failure must not lose the others' figures
            traceback.print_exc()
            return f"failed: {type(error).__name__}: {first_line(error)}"
        finally:
            self.running = None
        self.rows.extend(measured)
        print(f"{name}: " + ", ".join(f"{row.library} {row.median:.2f} it/s" for row in measured), flush=True)
        return None

    def note(self, variant: Variant, text: str) -> None:
        self.rows.append(Row(self.cases[variant.case].label, variant, "—", note=text))

    def write(self) -> str:
        text = report(self.rows, self.header)
        write_report(text, self.args.out)
        return text

    def cut_off(self) -> None:
        """Past --budget and --grace: report the variant in flight as stopped, then end the process."""
        if self.running is not None:
            self.note(self.running, f"stopped: still running {self.args.grace:.0f} s past --budget")
        print(self.write(), flush=True)
        os._exit(3)


def run_variants(
    args: argparse.Namespace, argv: list[str], dtype: torch.dtype, reference: str | None
) -> list[Row]:
    """Each variant in order within the budget, the report printed and written after each; the rows.
    A variant still running --grace seconds past the budget ends the process (exit status 3)."""
    budget = Budget(args.budget)
    session = Session(args, argv, dtype, reference)
    watchdog = threading.Timer(max(args.budget, 0.0) + args.grace, session.cut_off)
    watchdog.daemon = True
    watchdog.start()
    try:
        for name in args.variants:
            estimate = ESTIMATES[name] if not args.tiny else ESTIMATES[name] / 20
            reason = skip_reason(VARIANTS[name], args, budget, estimate)
            if reason is None:
                started = time.perf_counter()
                reason = session.run(name)
                budget.record(estimate, time.perf_counter() - started)
            if reason is not None:
                session.note(VARIANTS[name], reason)
                print(f"{name}: {reason}", flush=True)
            text = session.write()
    finally:
        watchdog.cancel()
    print(text, flush=True)
    return session.rows


if __name__ == "__main__":
    main()
