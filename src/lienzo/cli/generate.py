"""`lienzo generate / img2img / inpaint / outpaint`: draw images, one PNG each with its parameters."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from lienzo.cli.arguments import (
    add_device_arguments,
    add_family_argument,
    add_library_arguments,
    chosen_dtype,
    library_from_args,
    parse_sampler_options,
    parse_size,
)
from lienzo.cli.control import CONTROL_EPILOG, add_control_arguments, control_units
from lienzo.diffusion import SCHEDULERS
from lienzo.errors import InvalidArgumentError
from lienzo.io.taesd_files import load_tiny_decoder
from lienzo.pipelines.depth import load_depth_map
from lienzo.pipelines.fast_modes import FastModes, fast_modes_from
from lienzo.pipelines.images import load_image
from lienzo.pipelines.inpaint import load_mask
from lienzo.pipelines.masking import check_mask_size
from lienzo.pipelines.metadata import parse_parameters, read_parameters, save_png
from lienzo.pipelines.options import HIRES_UPSCALERS, SAFETY_MODES, HiresOptions, RefinerOptions
from lienzo.pipelines.output import prepare_target, release_paths, reserve_paths, write_png_atomically
from lienzo.pipelines.pipeline import load
from lienzo.pipelines.preview import FilmstripRecorder
from lienzo.pipelines.requests import MODE_EXTRAS, SIDES, validate_request
from lienzo.pipelines.safety import NSFWContentWarning, was_flagged
from lienzo.text.network_tags import extract_hypernet_tags, extract_lora_tags

VAE_TILING = {"auto": None, "on": True, "off": False}
GENERATE_EPILOG = (
    """examples:
  lienzo generate "a red circle on a blue square" --model models/sd15.safetensors --seed 42
  lienzo generate "a lighthouse at dusk" -n "blurry, text" --size 768x512 --steps 30 --cfg 6.5 \\
      --sampler "DPM++ 2M Karras" --batch 4 --model models/sd15.safetensors -o outputs/lighthouse
  lienzo generate --from-png outputs/00001-42.png --model models/sd15.safetensors    # same image again
  lienzo generate --prompt-file prompts.txt --hires-scale 2 --model models/sdxl.safetensors
  lienzo generate "a fox" --preview-every 5 --model models/sd15.safetensors          # + filmstrip
  lienzo generate "a fox" --cfg-cutoff 0.5 --deepcache 3 --tome 0.5 --model models/sd15.safetensors

Files go to outputs/ as 00001-<seed>.png, 00002-<seed+1>.png, ... (the next free number; existing
files are never replaced). Every PNG carries A1111's "parameters" text.

"""
    + CONTROL_EPILOG
)
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
    "sampler_options",
)
"""Settings a --from-png file supplies (command-line flags override them)."""
COMMAND_SETTINGS = (*RECORD_SETTINGS, "batch_size", "strength")
CLI_EXTRAS = ("preview_every", "refiner", "refiner_switch_at")
"""Extras the command line handles itself rather than passing to the pipeline method."""


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
    sampling.add_argument(
        "--eta", type=float, help="the sampler's eta (ancestral noise; default the sampler's)"
    )
    sampling.add_argument("--s-noise", type=float, help="the sampler's noise multiplier s_noise (default 1)")
    sampling.add_argument(
        "--sampler-option",
        action="append",
        metavar="KEY=VALUE",
        help="any other sampler option, e.g. s_churn=0.5 or solver_type=heun (repeatable)",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        help="a diffusers folder, a .safetensors/.ckpt file, or the name of one in the models folder's "
        "checkpoints/ (default: the built-in model)",
    )
    add_family_argument(model)
    model.add_argument("--vae", help="another VAE: a file or folder, or a name in the models folder's vae/")
    add_library_arguments(model)
    add_device_arguments(model)
    model.add_argument(
        "--vae-tiling",
        choices=list(VAE_TILING),
        default="auto",
        help="run the VAE on overlapping tiles: auto (images over 1024x1024), on, off",
    )
    model.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet (same images; the first image pays minutes of compiling, cached "
        "for later runs under ~/.cache/lienzo/inductor)",
    )
    model.add_argument(
        "--safety-checker",
        choices=SAFETY_MODES,
        help="NSFW filter: auto (on when the model folder has safety_checker/, as diffusers), on, off; "
        "a flagged image is blacked out and noted (default auto)",
    )
    output = parser.add_argument_group("input and output")
    output.add_argument("-o", "--output", type=Path, help="a .png file or a folder (default outputs/)")
    output.add_argument("--from-png", type=Path, help="reuse the settings stored in a PNG's parameters")
    output.add_argument("--prompt-file", type=Path, help="a text file with one prompt per line")
    output.add_argument("--preview-every", type=int, help="also write a filmstrip of every N-th step")
    output.add_argument(
        "--preview-decoder",
        type=Path,
        metavar="FILE",
        help="decode the filmstrip with TAESD's tiny decoder (taesd_decoder.safetensors) instead of the VAE",
    )
    output.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_fast_mode_arguments(parser)
    add_hires_and_refiner_arguments(parser)
    add_control_arguments(parser)


def add_fast_mode_arguments(parser: argparse.ArgumentParser) -> None:
    """The opt-in fast modes (lienzo.pipelines.fast_modes); each changes the image, all off by default."""
    fast = parser.add_argument_group("fast modes (faster, but they change the image; off by default)")
    fast.add_argument(
        "--cfg-cutoff",
        type=float,
        metavar="F",
        help="classifier-free guidance for the first fraction F of the steps only, then the prompt alone "
        "(1 = every step)",
    )
    fast.add_argument(
        "--deepcache",
        type=int,
        metavar="N",
        help="DeepCache: the whole UNet every N-th step, its deep features reused between (1 = off)",
    )
    fast.add_argument(
        "--tome",
        type=float,
        metavar="RATIO",
        help="token merging: merge this fraction of the tokens in high-resolution self-attention (0 = off)",
    )


def fast_settings(args: argparse.Namespace, record: dict) -> FastModes:
    """The fast modes: the stored record's, overridden by --cfg-cutoff, --deepcache and --tome."""
    flags = {"cfg_cutoff": args.cfg_cutoff, "deepcache": args.deepcache, "tome": args.tome}
    stored = dict(record.get("fast") or {})
    return fast_modes_from(stored | {key: value for key, value in flags.items() if value is not None})


def add_hires_and_refiner_arguments(parser: argparse.ArgumentParser) -> None:
    """The hires fix and SDXL refiner options, which every generation command takes."""
    hires = parser.add_argument_group("hires fix and refiner")
    hires.add_argument("--hires-scale", type=float, help="upscale factor of a second img2img pass, e.g. 2")
    hires.add_argument("--hires-steps", type=int, help="steps of the second pass (default: --steps)")
    hires.add_argument("--hires-strength", type=float, help="denoising strength of the second pass (0.5)")
    hires.add_argument("--hires-upscaler", choices=HIRES_UPSCALERS, help="how to upscale (default latent)")
    hires.add_argument(
        "--refiner", help="an SDXL refiner model (path or checkpoint name) to finish the image"
    )
    hires.add_argument("--refiner-switch-at", type=float, help="fraction of steps before the refiner (0.8)")


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo generate`."""
    add_generation_arguments(parser)


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
    for side in SIDES:
        parser.add_argument(
            f"--{side}", type=int, default=0, help=f"pixels to add on the {side} (multiple of 8)"
        )
    parser.add_argument("--mask-blur", type=float, help="blur of the seam in pixels (default 4)")


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
    hires = hires_settings(args, record)
    settings |= {"hires": hires} if hires is not None else {}
    sampler_options = dict(settings.get("sampler_options") or {}) | parse_sampler_options(args.sampler_option)
    named = {"eta": args.eta, "s_noise": args.s_noise}
    sampler_options |= {key: value for key, value in named.items() if value is not None}
    settings["sampler_options"] = sampler_options
    settings["vae_tiling"] = VAE_TILING[args.vae_tiling]
    settings["fast"] = fast_settings(args, record)
    if args.safety_checker is not None:
        settings["safety_checker"] = args.safety_checker
    if args.refiner is not None:
        switch = {"switch_at": args.refiner_switch_at} if args.refiner_switch_at is not None else {}
        refiner = library_from_args(args).resolve("checkpoints", args.refiner)
        settings["refiner"] = RefinerOptions(refiner, **switch)
    units = control_units(args, record, library_from_args(args))
    settings |= {"controlnets": units} if units else {}
    return settings


def command_extras(args: argparse.Namespace) -> dict:
    """The command's options beyond the generation settings, by their `validate_request` names."""
    return {key: getattr(args, key) for key in MODE_EXTRAS[args.command]}


def input_images(args: argparse.Namespace) -> dict:
    """The command's input images, loaded and checked (the mask must match the image's size; depth2img's
    depth map is None when it is to be estimated)."""
    if args.command == "generate":
        return {}
    images = {"image": load_image(args.image)}
    if args.command == "inpaint":
        images["mask"] = load_mask(args.mask)
        check_mask_size(images["mask"], images["image"])
    if args.command == "depth2img":
        images["depth"] = None if args.depth is None else load_depth_map(args.depth)[0, 0]
    return images


def run_pipeline(pipe, args: argparse.Namespace, prompt: str, images: dict, settings: dict, callback):
    """Call the pipeline method of the command with its own options."""
    extras = command_extras(args)
    options = {key: value for key, value in extras.items() if value is not None and key not in CLI_EXTRAS}
    method = getattr(pipe, args.command)
    return method(*images.values(), prompt, callback=callback, progress=not args.quiet, **settings, **options)


def preview_decoder(args: argparse.Namespace):
    """The --preview-decoder TAESD decoder on the chosen device (None without the flag); it needs
    --preview-every."""
    if args.preview_decoder is None:
        return None
    if not args.preview_every:
        raise InvalidArgumentError("--preview-decoder decodes the filmstrip: add --preview-every N")
    return load_tiny_decoder(args.preview_decoder, device=args.device)


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
    validate_request(args.command, settings, command_extras(args))
    images = input_images(args)
    library = library_from_args(args)
    for prompt in prompts:
        for tag in extract_lora_tags(prompt)[1]:
            library.resolve("loras", tag.name)
        for tag in extract_hypernet_tags(prompt)[1]:
            library.resolve("hypernetworks", tag.name)
    model = None if args.model is None else library.resolve("checkpoints", args.model)
    vae = None if args.vae is None else library.resolve("vae", args.vae)
    target = prepare_target(args.output)
    dtype = chosen_dtype(args)
    preview = preview_decoder(args)
    pipe = load(model, device=args.device, dtype=dtype, family=args.family)
    pipe.library = library
    if vae is not None:
        pipe.use_vae(vae)
    warn_on_other_model(record, pipe)
    compiled = pipe.compile() if args.compile else None
    settings = pipe.resolve_controlnets(settings)
    for prompt in prompts:
        recorder = None
        if args.preview_every:
            recorder = FilmstripRecorder(pipe, args.preview_every, decoder=preview)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NSFWContentWarning)
            results = run_pipeline(pipe, args, prompt, images, settings, recorder)
        paths = write_images(results, target)
        if compiled is not None and compiled.first_call_seconds is not None and prompt is prompts[0]:
            print(
                f"note: --compile: the first UNet call took {compiled.first_call_seconds:.1f} s "
                "(compiling, or loading the cache)",
                file=sys.stderr,
            )
        for image, path in zip(results, paths, strict=True):
            if was_flagged(image):
                print(f"note: the safety checker flagged {path} as NSFW; it is blacked out", file=sys.stderr)
        if recorder is not None:
            paths.append(write_filmstrip(recorder, paths[0]))
        print("\n".join(str(path) for path in paths))
    return 0
