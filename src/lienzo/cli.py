"""The `lienzo` command line: one subcommand per task, each a thin wrapper over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .devices import DTYPES, add_device_arguments
from .diffusion import SCHEDULERS
from .errors import InvalidArgumentError, LienzoError
from .eval_command import add_eval_arguments, run_eval
from .io import read_model, write_model
from .io.model_files import dtype_names, parameter_count
from .models.specs import family_spec
from .pipelines.images import load_image
from .pipelines.inpaint import load_mask
from .pipelines.masking import check_mask_size, check_multiple_of_8
from .pipelines.metadata import parse_parameters, read_parameters, save_png
from .pipelines.options import HIRES_UPSCALERS, HiresOptions, RefinerOptions, resolve_options
from .pipelines.output import prepare_target, release_paths, reserve_paths, write_png_atomically
from .pipelines.pipeline import load
from .pipelines.preview import FilmstripRecorder
from .train_command import TRAIN_EPILOG, add_train_arguments, run_train

FORMATS = ("diffusers", "single-file")
VAE_TILING = {"auto": None, "on": True, "off": False}


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, how it adds its arguments, and what it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str = ""


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo info`."""
    parser.add_argument("path", type=Path, help="a diffusers folder or a .safetensors/.ckpt file")
    parser.add_argument("--family", help="model family, overriding detection (e.g. sd2-v)")


def run_info(args: argparse.Namespace) -> int:
    """Print a model's family, format, components and settings."""
    files = read_model(args.path, family=args.family)
    spec = files.spec
    downscale = 2 ** (len(spec.vae.ch_mult) - 1)
    lines = [
        f"path: {args.path}",
        f"family: {files.family}",
        f"format: {files.source_format}",
        f"prediction: {spec.prediction}",
        f"resolution: {spec.resolution}",
        f"latent: {spec.vae.embed_dim} channels at 1/{downscale} of the image size, "
        f"scaling factor {spec.vae.scaling_factor}",
        f"vector conditioning: {spec.vector_conditioning or 'none'}",
        "components:",
    ]
    for name, state_dict in files.components().items():
        lines.append(
            f"  {name}: {parameter_count(state_dict):,} parameters, {', '.join(dtype_names(state_dict))}"
        )
    lines.append("configs:")
    lines.append(f"  unet: {spec.unet}")
    lines.append(f"  vae: {spec.vae}")
    for index, tower in enumerate(spec.text_encoders):
        lines.append(f"  text_encoder[{index}]: {tower.config}")
    print("\n".join(lines))
    return 0


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo convert`."""
    parser.add_argument("src", type=Path, help="a diffusers folder or a .safetensors/.ckpt file")
    parser.add_argument("dst", type=Path, help="output: a .safetensors file or a folder")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating-point weights")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="output layout (default: single-file for a .safetensors DST, else diffusers)",
    )
    parser.add_argument("--family", help="model family, overriding detection (e.g. sd2-v)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")


def run_convert(args: argparse.Namespace) -> int:
    """Convert a model between diffusers folders and single files, optionally changing its dtype."""
    if args.dst.exists() and not args.overwrite:
        raise InvalidArgumentError(f"{args.dst} already exists; pass --overwrite to replace it")
    files = read_model(args.src, family=args.family)
    dtype = DTYPES[args.dtype] if args.dtype else None
    written = write_model(files, args.dst, format=args.format, dtype=dtype, overwrite=args.overwrite)
    print(f"wrote {files.family} model to {written}")
    return 0


GENERATE_EPILOG = """examples:
  lienzo generate "a red circle on a blue square" --model models/sd15.safetensors --seed 42
  lienzo generate "a lighthouse at dusk" -n "blurry, text" --size 768x512 --steps 30 --cfg 6.5 \\
      --sampler "DPM++ 2M Karras" --batch 4 --model models/sd15.safetensors -o outputs/lighthouse
  lienzo generate --from-png outputs/00001-42.png --model models/sd15.safetensors    # same image again
  lienzo generate --prompt-file prompts.txt --hires-scale 2 --model models/sdxl.safetensors
  lienzo generate "a fox" --preview-every 5 --model models/sd15.safetensors          # + filmstrip

Files go to outputs/ as 00001-<seed>.png, 00002-<seed+1>.png, ... (the next free number; existing
files are never replaced). Every PNG carries A1111's "parameters" text.
"""
IMG2IMG_EPILOG = """examples:
  lienzo img2img sketch.png "an oil painting of a harbour" --strength 0.6 --model models/sd15.safetensors
  lienzo img2img photo.jpg "the same street in winter" --size 768x512 --seed 7 --model models/sd15.safetensors
"""
INPAINT_EPILOG = """examples:
  lienzo inpaint room.png mask.png "a green armchair" --model models/sd15-inpainting.safetensors
  lienzo inpaint portrait.png face-mask.png "smiling" --only-masked --padding 32 --mask-blur 4 \\
      --model models/sd15.safetensors

The mask has the image's size: white = repaint, black = keep. Pixels outside the mask come back unchanged.
"""
OUTPAINT_EPILOG = """examples:
  lienzo outpaint beach.png "a wide sandy beach" --left 128 --right 128 --model models/sd15.safetensors
  lienzo outpaint tower.png "clouds above a tower" --top 256 --model models/sd15-inpainting.safetensors
"""
RECORD_SETTINGS = (
    "negative_prompt",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "seed",
    "width",
    "height",
    "clip_skip",
    "variation_seed",
    "variation_strength",
    "guidance_rescale",
)
"""Settings a --from-png file supplies (command-line flags override them)."""
COMMAND_SETTINGS = (*RECORD_SETTINGS, "batch_size", "strength")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings every generation command shares: prompt, sampling, model, output, previews."""
    parser.add_argument("prompt", nargs="?", help="what to draw (A1111 syntax: (word:1.2), [word], BREAK)")
    parser.add_argument("-n", "--negative", dest="negative_prompt", help="what to keep out of the image")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, help="sampler steps (default 20)")
    sampling.add_argument("--cfg", type=float, help="classifier-free guidance scale (default 7)")
    sampling.add_argument("--sampler", help='sampler id or A1111 name, e.g. euler, "DPM++ 2M Karras"')
    sampling.add_argument("--scheduler", help=f"sigma schedule: {', '.join(SCHEDULERS)} (default karras)")
    sampling.add_argument("--seed", type=int, help="noise seed; batch item i uses seed + i (default random)")
    sampling.add_argument(
        "--size", help="WIDTHxHEIGHT in multiples of 8, e.g. 512x768 (default: the model's)"
    )
    sampling.add_argument("--batch", dest="batch_size", type=int, help="images per prompt (default 1)")
    sampling.add_argument("--clip-skip", type=int, help="use the text encoder's N-th last layer (default 1)")
    sampling.add_argument("--variation-seed", type=int, help="seed of the noise to blend in")
    sampling.add_argument("--variation-strength", type=float, help="how much variation noise, 0..1")
    sampling.add_argument("--guidance-rescale", type=float, help="CFG rescale factor, 0..1 (default 0)")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        type=Path,
        help="a diffusers folder or a .safetensors/.ckpt file (default: the built-in model)",
    )
    model.add_argument("--family", help="model family, overriding detection (e.g. sd2-v)")
    add_device_arguments(model)
    model.add_argument(
        "--vae-tiling",
        choices=list(VAE_TILING),
        default="auto",
        help="run the VAE on overlapping tiles: auto (images over 1024x1024), on, off",
    )
    output = parser.add_argument_group("input and output")
    output.add_argument("-o", "--output", type=Path, help="a .png file or a folder (default outputs/)")
    output.add_argument("--from-png", type=Path, help="reuse the settings stored in a PNG's parameters")
    output.add_argument("--prompt-file", type=Path, help="a text file with one prompt per line")
    output.add_argument("--preview-every", type=int, help="also write a filmstrip of every N-th step")


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo generate`."""
    add_generation_arguments(parser)
    hires = parser.add_argument_group("hires fix and refiner")
    hires.add_argument("--hires-scale", type=float, help="upscale factor of a second img2img pass, e.g. 2")
    hires.add_argument("--hires-steps", type=int, help="steps of the second pass (default: --steps)")
    hires.add_argument("--hires-strength", type=float, help="denoising strength of the second pass (0.5)")
    hires.add_argument("--hires-upscaler", choices=HIRES_UPSCALERS, help="how to upscale (default latent)")
    hires.add_argument("--refiner", type=Path, help="an SDXL refiner model to finish the image")
    hires.add_argument("--refiner-switch-at", type=float, help="fraction of steps before the refiner (0.8)")


def add_img2img_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo img2img`."""
    parser.add_argument("image", type=Path, help="the starting image")
    add_generation_arguments(parser)
    parser.add_argument("--strength", type=float, help="how much to change the image, 0..1 (default 0.6)")


def add_inpaint_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo inpaint`."""
    parser.add_argument("image", type=Path, help="the image to repaint")
    parser.add_argument("mask", type=Path, help="same size as the image: white = repaint, black = keep")
    add_generation_arguments(parser)
    parser.add_argument("--strength", type=float, help="denoising strength, 0..1 (default 1)")
    parser.add_argument("--mask-blur", type=float, help="mask blur radius in pixels (default 4)")
    parser.add_argument("--only-masked", action="store_true", help="work on a box around the mask only")
    parser.add_argument("--padding", type=int, help="pixels around the mask box with --only-masked (32)")


def add_outpaint_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo outpaint`."""
    parser.add_argument("image", type=Path, help="the image to extend")
    add_generation_arguments(parser)
    for side in ("left", "right", "top", "bottom"):
        parser.add_argument(
            f"--{side}", type=int, default=0, help=f"pixels to add on the {side} (multiple of 8)"
        )
    parser.add_argument("--mask-blur", type=float, help="blur of the seam in pixels (default 4)")


def parse_size(text: str) -> tuple[int, int]:
    """(width, height) from "512x768" (or "512" for a square)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdigit() for part in parts):
        raise InvalidArgumentError(f"--size must look like 512x768 (WIDTHxHEIGHT), got {text!r}")
    width, height = (int(part) for part in (parts * 2)[:2])
    return width, height


def read_prompts(args: argparse.Namespace, record: dict) -> list[str]:
    """The prompts to run: one per non-empty line of --prompt-file, else the PROMPT (or the PNG's)."""
    if args.prompt_file is None:
        if args.prompt is None and not record:
            raise InvalidArgumentError("give a PROMPT in quotes, --prompt-file FILE or --from-png FILE")
        return [args.prompt if args.prompt is not None else record["prompt"]]
    if args.prompt is not None:
        raise InvalidArgumentError("give either a PROMPT or --prompt-file, not both")
    try:
        lines = args.prompt_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as error:
        raise InvalidArgumentError(
            f"prompt file {args.prompt_file} does not exist; check the path"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(
            f"cannot read prompt file {args.prompt_file}; give a UTF-8 text file"
        ) from error
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise InvalidArgumentError(f"prompt file {args.prompt_file} is empty; write one prompt per line")
    return prompts


def stored_record(args: argparse.Namespace) -> dict:
    """The settings record of --from-png (empty without it); generate refuses img2img-style records."""
    if args.from_png is None:
        return {}
    record = parse_parameters(read_parameters(args.from_png))
    if args.command == "generate" and record["mode"] != "txt2img":
        raise InvalidArgumentError(
            f"{args.from_png} was made from another image (it has a denoising strength but no hires fix); "
            "use lienzo img2img or inpaint with the source image and --from-png"
        )
    return record


def hires_settings(args: argparse.Namespace, record: dict) -> HiresOptions | None:
    """Hires fix options from the --hires-* flags over the stored record's hires fix."""
    stored = record.get("hires") or {}
    flags = {
        "scale": args.hires_scale,
        "steps": args.hires_steps,
        "strength": args.hires_strength,
        "upscaler": args.hires_upscaler,
    }
    values = {key: stored.get(key) for key in flags}
    values |= {key: value for key, value in flags.items() if value is not None}
    if values["scale"] is None:
        if any(value is not None for key, value in flags.items() if key != "scale"):
            raise InvalidArgumentError("the --hires-* options need --hires-scale (e.g. --hires-scale 2)")
        return None
    return HiresOptions(**{key: value for key, value in values.items() if value is not None})


def gather_settings(args: argparse.Namespace, record: dict) -> dict:
    """Keyword settings for the pipeline: the stored record's, overridden by the command-line flags."""
    settings = {key: record[key] for key in RECORD_SETTINGS if record.get(key) is not None}
    if args.command != "generate" and record.get("mode") == "img2img":
        settings["strength"] = record["strength"]
    if args.size is not None:
        settings["width"], settings["height"] = parse_size(args.size)
    flags = {key: getattr(args, key, None) for key in COMMAND_SETTINGS if key not in ("width", "height")}
    settings |= {key: value for key, value in flags.items() if value is not None}
    if args.command == "generate":
        hires = hires_settings(args, record)
        settings |= {"hires": hires} if hires is not None else {}
    return settings


def check_settings_early(args: argparse.Namespace, settings: dict) -> None:
    """Check every setting before the slow model load (the checks do not depend on the model)."""
    resolve_options(family_spec("sd1"), **settings)
    if args.preview_every is not None and args.preview_every < 1:
        raise InvalidArgumentError(f"--preview-every must be 1 or more steps, got {args.preview_every}")
    if args.command == "inpaint" and args.padding is not None:
        check_multiple_of_8("padding", args.padding)
    if args.command == "outpaint":
        for side in ("left", "right", "top", "bottom"):
            check_multiple_of_8(side, getattr(args, side))
        if not any(getattr(args, side) for side in ("left", "right", "top", "bottom")):
            raise InvalidArgumentError("outpainting needs a margin: give --left, --right, --top or --bottom")
    if getattr(args, "refiner_switch_at", None) is not None and getattr(args, "refiner", None) is None:
        raise InvalidArgumentError("--refiner-switch-at needs --refiner PATH")


def input_images(args: argparse.Namespace) -> dict:
    """The command's input images, loaded and checked (the mask must match the image's size)."""
    if args.command == "generate":
        return {}
    images = {"image": load_image(args.image)}
    if args.command == "inpaint":
        images["mask"] = load_mask(args.mask)
        check_mask_size(images["mask"], images["image"])
    return images


def run_pipeline(pipe, args: argparse.Namespace, prompt: str, images: dict, settings: dict, callback):
    """Call the pipeline method of the command with its own options."""
    if args.command == "generate":
        return pipe.generate(prompt, callback=callback, **settings)
    extras = {"callback": callback}
    if args.command == "inpaint":
        extras |= {"only_masked": args.only_masked}
        extras |= {
            key: getattr(args, key) for key in ("mask_blur", "padding") if getattr(args, key) is not None
        }
    if args.command == "outpaint":
        extras |= {side: getattr(args, side) for side in ("left", "right", "top", "bottom")}
        extras |= {"mask_blur": args.mask_blur} if args.mask_blur is not None else {}
    method = getattr(pipe, args.command)
    return method(*images.values(), prompt, **settings, **extras)


def write_images(images: list, target: Path) -> list[Path]:
    """Save each image with its parameters under a fresh name; nothing partial is left on failure."""
    paths = reserve_paths(target, [image.info["lienzo"]["seed"] for image in images])
    try:
        for image, path in zip(images, paths, strict=True):
            save_png(image, path, image.info["lienzo"])
    except BaseException:
        release_paths(paths)
        raise
    return paths


def write_filmstrip(recorder: FilmstripRecorder, first_output: Path) -> Path:
    """Save the preview filmstrip beside the first output as `<name>-preview.png`."""
    target = first_output.with_name(f"{first_output.stem}-preview.png")
    (path,) = reserve_paths(target, [0])
    try:
        return write_png_atomically(recorder.filmstrip(), path)
    except BaseException:
        release_paths([path])
        raise


def warn_on_other_model(record: dict, pipe) -> None:
    """Note on stderr when --from-png names a model hash that differs from the loaded model's."""
    stored, loaded = record.get("model_hash"), pipe.model_hash
    if stored and loaded and stored.lower() != loaded.lower():
        print(
            f"note: the PNG was made with model hash {stored}, this model has {loaded}; images will differ",
            file=sys.stderr,
        )


def run_generation(args: argparse.Namespace) -> int:
    """Run generate / img2img / inpaint / outpaint and write one PNG per image."""
    record = stored_record(args)
    prompts = read_prompts(args, record)
    settings = gather_settings(args, record)
    check_settings_early(args, settings)
    images = input_images(args)
    target = prepare_target(args.output)
    dtype = DTYPES[args.dtype] if args.dtype else None
    pipe = load(args.model, device=args.device, dtype=dtype, family=args.family)
    warn_on_other_model(record, pipe)
    pipe.vae_tiling = VAE_TILING[args.vae_tiling]
    if getattr(args, "refiner", None) is not None:
        refiner = load(args.refiner, device=args.device, dtype=dtype)
        switch = {"switch_at": args.refiner_switch_at} if args.refiner_switch_at is not None else {}
        settings["refiner"] = RefinerOptions(refiner, **switch)
    for prompt in prompts:
        recorder = FilmstripRecorder(pipe, args.preview_every) if args.preview_every else None
        results = run_pipeline(pipe, args, prompt, images, settings, recorder)
        paths = write_images(results, target)
        if recorder is not None:
            paths.append(write_filmstrip(recorder, paths[0]))
        print("\n".join(str(path) for path in paths))
    return 0


GENERATION_COMMANDS = [
    Command(
        "generate",
        "draw images from a prompt (txt2img)",
        add_generate_arguments,
        run_generation,
        GENERATE_EPILOG,
    ),
    Command(
        "img2img", "redraw an image following a prompt", add_img2img_arguments, run_generation, IMG2IMG_EPILOG
    ),
    Command(
        "inpaint",
        "repaint the masked part of an image",
        add_inpaint_arguments,
        run_generation,
        INPAINT_EPILOG,
    ),
    Command(
        "outpaint",
        "extend an image beyond its borders",
        add_outpaint_arguments,
        run_generation,
        OUTPAINT_EPILOG,
    ),
]


COMMANDS = [
    *GENERATION_COMMANDS,
    Command("info", "show a model's family, format, components and settings", add_info_arguments, run_info),
    Command("convert", "convert diffusers folders and single files", add_convert_arguments, run_convert),
    Command("eval", "score a model on a synthetic world (shapes)", add_eval_arguments, run_eval),
    Command(
        "train",
        "train a model with a recipe (shapes: the built-in model)",
        add_train_arguments,
        run_train,
        TRAIN_EPILOG,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="lienzo", description="Stable Diffusion, built whole.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = subcommands.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `lienzo` command line; user errors print `error: <message>` and return 1."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except LienzoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
