"""Train one of the built-in canny ControlNets by its recipe (lienzo.recipes.controlnet_shapes).

Usage: PYTHONPATH=src python bench/train_canny_controlnet.py shapes-v2-canny --work runs/canny [--resume]

Renders the recipe's scenes into WORK/data (once), then runs its `lienzo train controlnet` command into
WORK/NAME (state, loss log and caches in WORK/NAME-training). Score the result with
`bench/controlnet_follow.py --model MODEL --controlnet WORK/NAME --scenes 100 --baseline`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.cli import main as lienzo_main
from lienzo.recipes.controlnet_shapes import CANNY_RECIPES, write_control_scenes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=sorted(CANNY_RECIPES))
    parser.add_argument("--work", type=Path, required=True, help="folder for the data and the run")
    parser.add_argument("--resume", action="store_true", help="continue a stopped run")
    args = parser.parse_args()
    recipe = CANNY_RECIPES[args.name]
    data = args.work / "data"
    if not (data / f"{recipe.scenes - 1:04d}.txt").exists():
        write_control_scenes(data, recipe)
    command = recipe.command(data, args.work / args.name)
    print("lienzo " + " ".join(command))
    return lienzo_main([*command, "--quiet", *(["--resume"] if args.resume else [])])


if __name__ == "__main__":
    raise SystemExit(main())
