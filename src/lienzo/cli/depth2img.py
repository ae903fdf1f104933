"""`lienzo depth2img IMAGE PROMPT`: redraw an image with an SD 2 depth model, keeping its depth layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.cli.generate import add_generation_arguments

DEPTH2IMG_EPILOG = """examples:
  lienzo depth2img room.png "a cozy cabin interior" --model models/sd2-depth      # depth estimated (DPT)
  lienzo depth2img room.png "a spaceship cockpit" --depth room-depth.png --strength 0.9 \\
      --model models/512-depth-ema.safetensors

Without --depth, the depth map comes from the model folder's depth_estimator/ + feature_extractor/, or
from the models folder's depth/ (a transformers DPT folder such as Intel/dpt-hybrid-midas); lienzo ships
no depth weights, and the error says which files to get and where to put them.
"""


def add_depth2img_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo depth2img`."""
    parser.add_argument("image", type=Path, help="the starting image")
    add_generation_arguments(parser)
    parser.add_argument(
        "--depth", type=Path, help="a depth map image, near = bright (default: estimated from the image)"
    )
    parser.add_argument("--strength", type=float, help="how much to change the image, 0..1 (default 0.8)")
