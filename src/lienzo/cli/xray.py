"""`lienzo xray` and `lienzo grid`: look inside one generation, or compare settings side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lienzo.cli.arguments import chosen_dtype, library_from_args
from lienzo.cli.generate import add_generation_arguments, gather_settings, read_prompts, stored_record
from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.grid import plan_grid, plot_grid
from lienzo.pipelines.grid_axes import parse_axis
from lienzo.pipelines.images import load_image
from lienzo.pipelines.output import check_writable_folder
from lienzo.pipelines.pipeline import load
from lienzo.pipelines.requests import validate_request
from lienzo.pipelines.xray.capture import SCORES, MapSettings
from lienzo.pipelines.xray.run import DEFAULT_EVERY, run_xray
from lienzo.text.network_tags import extract_network_tags

XRAY_EPILOG = """examples:
  lienzo xray "a large red circle in the center on a blue background" --seed 3 -o xray/
  lienzo xray "a lighthouse at dusk" --model models/sd15.safetensors --steps 30 --every 3 -o xray/

Writes image.png, tokens.json, schedule.json, sigmas.png, trajectory.png, attention/NN-WORD.png (one
grayscale map per word, NN = the word's index in the prompt) and index.html, which shows them all.
"""
GRID_EPILOG = """examples:
  lienzo grid "a red circle on a blue background" --x sampler=euler,dpmpp_2m --y cfg=3,7,11 -o grid/
  lienzo grid "a cat" --x "steps=10-30 (+10)" --y seed=1,2 --z "prompt_sr=cat,dog,fox" --model sd15 -o grid/
  lienzo grid "a portrait" --x lora:ink=0,0.5,1 --y size=512x512,512x768 --model sd15 -o grid/

Axes: seed, sampler, scheduler, steps, cfg, size (WxH), denoising (with --image or --hires-scale),
clip_skip, model, lora:NAME (the weight of <lora:NAME:w> added to the prompt), prompt_sr (the first value
is replaced in the prompt by each value), controlnet_strength (every --controlnet unit's).
Ranges: 1-5, "10-30 (+10)", "0-1 [5]". Writes grid.png (or grid-NN.png per Z value) and images/, each
image with its parameters.
"""
REFUSED_FLAGS = {
    "prompt_file": "--prompt-file",
    "preview_every": "--preview-every",
    "preview_decoder": "--preview-decoder",
}


def add_xray_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo xray`: the generation settings, --every and -o DIR."""
    add_generation_arguments(parser)
    parser.add_argument(
        "--every", type=int, default=DEFAULT_EVERY, help="decode the trajectory every K steps (default 5)"
    )
    defaults = MapSettings()
    maps = parser.add_argument_group("attention maps (docs/xray.md)")
    maps.add_argument(
        "--map-score",
        choices=SCORES,
        default=defaults.score,
        help=f"average query-key scores (logit) or softmax probabilities, as DAAM (default {defaults.score})",
    )
    maps.add_argument(
        "--map-later-fraction",
        type=float,
        default=defaults.later_fraction,
        metavar="F",
        help=f"aggregate the last F of the steps, 0 < F <= 1 (default {defaults.later_fraction})",
    )
    maps.add_argument(
        "--map-min-side",
        type=int,
        default=defaults.min_map_side,
        metavar="CELLS",
        help=f"only layers at least CELLS a side; 1 = every layer (default {defaults.min_map_side})",
    )


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo grid`: the generation settings, the axes and an optional starting image."""
    add_generation_arguments(parser)
    axes = parser.add_argument_group("axes")
    axes.add_argument("--x", required=True, metavar="NAME=V1,V2,...", help="the columns, e.g. cfg=3,7,11")
    axes.add_argument("--y", metavar="NAME=V1,V2,...", help="the rows, e.g. sampler=euler,dpmpp_2m")
    axes.add_argument("--z", metavar="NAME=V1,V2,...", help="one grid per value, e.g. steps=10,20")
    axes.add_argument("--image", type=Path, help="img2img every cell from this image")
    axes.add_argument("--strength", type=float, help="img2img denoising strength with --image (0.6)")


def _common(args: argparse.Namespace) -> tuple[str, dict]:
    """The one prompt and the settings of an xray or grid command, checked before any model loads."""
    for key, flag in REFUSED_FLAGS.items():
        if getattr(args, key, None) is not None:
            raise InvalidArgumentError(f"lienzo {args.command} does not take {flag}")
    if args.output is None:
        raise InvalidArgumentError(f"give the folder to write to with -o DIR, e.g. -o {args.command}/")
    check_writable_folder(args.output)
    record = stored_record(args)
    (prompt,) = read_prompts(args, record)
    settings = gather_settings(args, record)
    settings.pop("strength", None)
    return prompt, settings


def _load(args: argparse.Namespace, prompts: list[str]):
    """The model of --model (or the built-in one) with --vae, after the prompts' tags are found."""
    library = library_from_args(args)
    for prompt in prompts:
        _, loras, hypernets = extract_network_tags(prompt)
        for tag in loras:
            library.resolve("loras", tag.name)
        for tag in hypernets:
            library.resolve("hypernetworks", tag.name)
    model = None if args.model is None else library.resolve("checkpoints", args.model)
    vae = None if args.vae is None else library.resolve("vae", args.vae)
    pipe = load(model, device=args.device, dtype=chosen_dtype(args), family=args.family)
    pipe.library = library
    if vae is not None:
        pipe.use_vae(vae)
    return pipe


def run_xray_command(args: argparse.Namespace) -> int:
    """Run `lienzo xray`: generate once with the x-ray on and write its folder."""
    prompt, settings = _common(args)
    if not prompt.strip():
        raise InvalidArgumentError('the prompt is empty: give the prompt to x-ray, e.g. "a red circle"')
    if args.every < 1:
        raise InvalidArgumentError(f"--every must be 1 or more steps, got {args.every}")
    maps = MapSettings(
        score=args.map_score, later_fraction=args.map_later_fraction, min_map_side=args.map_min_side
    )
    validate_request("generate", settings)
    pipe = _load(args, [prompt])
    xray = run_xray(pipe, prompt, every=args.every, map_settings=maps, progress=not args.quiet, **settings)
    for path in xray.save(args.output):
        print(path)
    return 0


def run_grid_command(args: argparse.Namespace) -> int:
    """Run `lienzo grid`: plan every cell (failing before any image), generate, write the grids."""
    prompt, settings = _common(args)
    if args.strength is not None:
        if args.image is None:
            raise InvalidArgumentError("--strength needs --image (the grid's starting image)")
        settings["strength"] = args.strength
    axes = [parse_axis(args.x, "--x")] + [
        None if text is None else parse_axis(text, flag) for text, flag in ((args.y, "--y"), (args.z, "--z"))
    ]
    image = None if args.image is None else load_image(args.image)
    library = library_from_args(args)
    cells = plan_grid(prompt, axes, settings, image=image is not None, check_name=library.resolve)
    pipe = _load(args, list(dict.fromkeys(cell.prompt for cell in cells)))
    done = []

    def report(cell, _) -> None:
        done.append(cell)
        if not args.quiet:
            print(f"grid: {len(done)}/{len(cells)} images", file=sys.stderr, flush=True)

    result = plot_grid(pipe, prompt, axes, image=image, callback=report, **settings)
    for path in result.save(args.output):
        print(path)
    return 0
