"""How often the built-in model, steered by a canny ControlNet, puts the object where the edges are.

Usage: PYTHONPATH=src python bench/controlnet_follow.py [--controlnet shapes-v2-canny] [--scenes 100]
       [--steps N] [--state RUN/training_state.pt] [--baseline] [--example docs/images/x.png]
       [--model shapes-v1 --controlnet shapes-v1-canny]

Renders `--scenes` one-object base-world scenes placed at random (a seed the training data never uses),
makes each one's canny map, and draws a prompt that names only the colour, the shape and the background
over it. lienzo.worlds.scorer then scores every image against the scene's full caption, position and size
included; the follow rate is the share that match (chance of the position alone: 1 in 9). `--state`
scores the ControlNet of a training run's saved state instead of a finished folder; `--baseline` also
scores the same prompts drawn without the ControlNet; `--example` writes the first scenes' canny maps
above the images drawn from them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lienzo.io.library import library_from_config
from lienzo.pipelines.controlnets import LoadedControlNet
from lienzo.pipelines.output import write_png_atomically
from lienzo.pipelines.pipeline import load
from lienzo.recipes.controlnet_shapes import follow_rate
from lienzo.recipes.fine_tuning import image_grid
from lienzo.training.controlnet_training import new_controlnet


def controlnet_of_state(pipe, state: Path) -> LoadedControlNet:
    """The ControlNet a training run saved in its resumable state."""
    controlnet = new_controlnet(pipe.unet, pipe.spec.vae.downscale_factor)
    controlnet.load_state_dict(torch.load(state, weights_only=True)["modules"]["controlnet"])
    return LoadedControlNet(controlnet.eval().requires_grad_(False), state.parent.name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--controlnet", default="shapes-v2-canny", help="ControlNet name or folder")
    parser.add_argument("--model", help="the base model, a name or path (default: the built-in model)")
    parser.add_argument("--state", type=Path, help="a training run's training_state.pt instead")
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's, 20)")
    parser.add_argument("--baseline", action="store_true", help="also score without the ControlNet")
    parser.add_argument("--example", type=Path, help="write the first 6 canny maps and images here")
    args = parser.parse_args()
    library = library_from_config(allow_paths=True)
    pipe = load(library.resolve("checkpoints", args.model) if args.model else None)
    controlnet = (
        controlnet_of_state(pipe, args.state) if args.state else pipe.load_controlnet(args.controlnet)
    )
    started = time.perf_counter()
    rate, items = follow_rate(pipe, controlnet, args.scenes, steps=args.steps)
    seconds = time.perf_counter() - started
    matched = sum(item.matched for item in items)
    steps = args.steps or "default"
    print(f"follow rate {rate:.1%} ({matched}/{args.scenes}), {steps} steps, {seconds:.0f} s")
    if args.baseline:
        rate, _ = follow_rate(pipe, controlnet, args.scenes, steps=args.steps, strength=0.0)
        print(f"without the ControlNet {rate:.1%}")
    if args.example:
        shown = items[:6]
        tiles = [item.edges for item in shown] + [item.image for item in shown]
        write_png_atomically(image_grid(tiles, columns=len(shown)), args.example)
        for item in shown:
            print(("match " if item.matched else "miss  ") + f"{item.prompt!r} -> {item.expected!r}")


if __name__ == "__main__":
    main()
