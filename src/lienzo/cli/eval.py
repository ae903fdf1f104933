"""`lienzo eval shapes`: score the evaluation prompt sets, print the accuracy table, save contact sheets."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from lienzo.cli.arguments import add_device_arguments, chosen_dtype, library_from_args
from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.output import check_writable_folder, write_png_atomically
from lienzo.pipelines.pipeline import load
from lienzo.worlds.evaluate import CATEGORIES, EvalReport, contact_sheet, evaluate, evaluation_prompts


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo eval shapes`."""
    parser.add_argument("world", choices=["shapes"], help="the world whose scorer judges the images")
    parser.add_argument(
        "--model", help="model folder, file or checkpoint name (default: the built-in model, shapes-v2)"
    )
    parser.add_argument("--prompts", type=int, default=200, help="prompts per category (default: 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt sets and of the first image")
    parser.add_argument("--out", type=Path, default=Path("eval-shapes"), help="folder for the contact sheets")
    add_device_arguments(parser)


def _check_arguments(prompts_per_category: int, out: Path) -> None:
    if prompts_per_category < 1:
        raise InvalidArgumentError(f"--prompts must be at least 1, got {prompts_per_category}")
    check_writable_folder(out, "--out")


def _pipeline_generator(args: argparse.Namespace) -> Callable[[str, int], Image.Image]:
    model = None if args.model is None else library_from_args(args).resolve("checkpoints", args.model)
    pipe = load(model, device=args.device, dtype=chosen_dtype(args))

    def generate(prompt: str, seed: int) -> Image.Image:
        return pipe.generate(prompt, seed=seed, progress=False)[0]

    return generate


def run_shapes_eval(
    generate_fn: Callable[[str, int], Image.Image], prompts_per_category: int, seed: int, out: Path
) -> EvalReport:
    """Score every category's prompt set, print the table and write one contact sheet per category."""
    _check_arguments(prompts_per_category, out)
    prompts = [p for kind in CATEGORIES for p in evaluation_prompts(prompts_per_category, seed, kind)]
    report = evaluate(generate_fn, prompts, [seed + index for index in range(len(prompts))])
    print(report.table())
    out.mkdir(parents=True, exist_ok=True)
    for category in CATEGORIES:
        chosen = [i for i, item in enumerate(report.items) if item.category == category]
        sheet = contact_sheet(
            [report.images[i] for i in chosen],
            [report.items[i].prompt for i in chosen],
            [report.items[i].result.matched for i in chosen],
        )
        write_png_atomically(sheet, out / f"contact_sheet_{category}.png")
    print(f"contact sheets written to {out}")
    return report


def run_eval(args: argparse.Namespace) -> int:
    """Run `lienzo eval shapes` on a loaded model; exit status 0 once the report is written."""
    _check_arguments(args.prompts, args.out)
    run_shapes_eval(_pipeline_generator(args), args.prompts, args.seed, args.out)
    return 0
