"""Prior preservation's arguments (class prompts, count, weight, steps, cache), shared by `lienzo train
dreambooth`, `lora` and `hypernetwork`."""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.errors import InvalidArgumentError
from lienzo.recipes.class_images import DEFAULT_CLASS_IMAGES, PriorPreservation, default_class_cache

PRIOR_HELP = """With --class-prompt (repeatable, or @FILE with one prompt a line, taken in turn) the base
model first draws --class-images images (seeds 0, 1, ...), cached under --class-cache by model, prompts,
count and size, and their loss is added at --prior-loss-weight (DreamBooth's prior preservation, kohya's
regularisation images): the model keeps drawing such prompts as before while it learns the new data."""


def add_prior_arguments(parser: argparse.ArgumentParser) -> None:
    """The prior preservation group."""
    prior = parser.add_argument_group("prior preservation")
    prior.add_argument(
        "--class-prompt",
        action="append",
        default=[],
        help="prompt of the class images (repeatable, or @FILE: one prompt a line); none: no prior loss",
    )
    prior.add_argument(
        "--class-images",
        type=int,
        default=DEFAULT_CLASS_IMAGES,
        help=f"class images to draw ({DEFAULT_CLASS_IMAGES})",
    )
    prior.add_argument("--prior-loss-weight", type=float, default=1.0, help="weight of the class loss (1)")
    prior.add_argument(
        "--class-steps", type=int, help="sampling steps of the class images (default: the model's)"
    )
    prior.add_argument(
        "--class-cache", type=Path, help=f"folder of cached class images ({default_class_cache()})"
    )


def class_prompts(values: list[str]) -> tuple[str, ...]:
    """The --class-prompt values, each `@FILE` replaced by the file's non-empty lines."""
    prompts = []
    for value in values:
        if not value.startswith("@"):
            prompts.append(value)
            continue
        path = Path(value[1:])
        if not path.is_file():
            raise InvalidArgumentError(f"--class-prompt {value}: no file {path}; give a file of prompts")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise InvalidArgumentError(f"--class-prompt {value}: {path} holds no prompt")
        prompts.extend(lines)
    return tuple(prompts)


def prior_preservation(args: argparse.Namespace) -> PriorPreservation:
    """The prior preservation settings from the arguments."""
    return PriorPreservation(
        prompts=class_prompts(args.class_prompt),
        count=args.class_images,
        weight=args.prior_loss_weight,
        cache=args.class_cache,
        steps=args.class_steps,
    )
