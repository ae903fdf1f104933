"""The `lienzo` command line: one subcommand per task, each a thin wrapper over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata

from lienzo import __version__
from lienzo.cli.depth2img import DEPTH2IMG_EPILOG, add_depth2img_arguments
from lienzo.cli.eval import add_eval_arguments, run_eval
from lienzo.cli.generate import (
    GENERATE_EPILOG,
    IMG2IMG_EPILOG,
    INPAINT_EPILOG,
    OUTPAINT_EPILOG,
    add_generate_arguments,
    add_img2img_arguments,
    add_inpaint_arguments,
    add_outpaint_arguments,
    run_generation,
)
from lienzo.cli.library import MODELS_EPILOG, add_models_arguments, run_models
from lienzo.cli.merge import (
    EXTRACT_EPILOG,
    MERGE_EPILOG,
    add_extract_arguments,
    add_merge_arguments,
    run_extract,
    run_merge,
)
from lienzo.cli.models import add_convert_arguments, add_info_arguments, run_convert, run_info
from lienzo.cli.preprocess import PREPROCESS_EPILOG, add_preprocess_arguments, run_preprocess
from lienzo.cli.run import RUN_EPILOG, add_run_arguments, run_workflow
from lienzo.cli.serve import SERVE_EPILOG, add_serve_arguments, run_serve
from lienzo.cli.train import TRAIN_EPILOG, add_train_arguments, run_train
from lienzo.cli.xray import (
    GRID_EPILOG,
    XRAY_EPILOG,
    add_grid_arguments,
    add_xray_arguments,
    run_grid_command,
    run_xray_command,
)
from lienzo.errors import LienzoError
from lienzo.models.cpu_attention import set_cpu_attention
from lienzo.models.packed_conv import set_weight_packing

DEBUG_VARIABLE = "LIENZO_DEBUG"
INTERRUPTED = 130
"""Exit status after Ctrl+C (128 + SIGINT), as shells report it."""


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one-line help, how it adds its arguments, and what it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str = ""


COMMANDS = [
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
    Command(
        "depth2img",
        "redraw an image keeping its depth (SD 2 depth models; the map is estimated when not given)",
        add_depth2img_arguments,
        run_generation,
        DEPTH2IMG_EPILOG,
    ),
    Command("info", "show a model's family, format, components and settings", add_info_arguments, run_info),
    Command("convert", "convert diffusers folders and single files", add_convert_arguments, run_convert),
    Command(
        "models",
        "list the checkpoints, LoRAs, embeddings, ... in the models folders",
        add_models_arguments,
        run_models,
        MODELS_EPILOG,
    ),
    Command(
        "merge",
        "merge checkpoints (weighted sum, add difference), bake in LoRAs and a VAE",
        add_merge_arguments,
        run_merge,
        MERGE_EPILOG,
    ),
    Command(
        "extract-lora",
        "extract a LoRA from the difference of a fine-tuned model and its base",
        add_extract_arguments,
        run_extract,
        EXTRACT_EPILOG,
    ),
    Command(
        "preprocess",
        "turn an image into a ControlNet control image (canny, scribble, depth, invert)",
        add_preprocess_arguments,
        run_preprocess,
        PREPROCESS_EPILOG,
    ),
    Command(
        "run",
        "run a ComfyUI workflow (API or UI JSON, or a PNG carrying one)",
        add_run_arguments,
        run_workflow,
        RUN_EPILOG,
    ),
    Command("eval", "score a model on a synthetic world (shapes)", add_eval_arguments, run_eval),
    Command(
        "xray",
        "look inside one generation: tokens, schedule, trajectory, per-word attention maps",
        add_xray_arguments,
        run_xray_command,
        XRAY_EPILOG,
    ),
    Command(
        "grid",
        "compare settings side by side (A1111's X/Y/Z plot)",
        add_grid_arguments,
        run_grid_command,
        GRID_EPILOG,
    ),
    Command(
        "train",
        "train a model (recipe shapes) or fine-tune one (lora, textual-inversion, ...)",
        add_train_arguments,
        run_train,
        TRAIN_EPILOG,
    ),
    Command(
        "serve",
        "serve ComfyUI's and A1111's HTTP APIs (and ComfyUI's frontend) on one job queue",
        add_serve_arguments,
        run_serve,
        SERVE_EPILOG,
    ),
]


def version() -> str:
    """The installed lienzo's version, or the source tree's when it is not installed."""
    try:
        return metadata.version("lienzo")
    except metadata.PackageNotFoundError:
        return __version__


def add_debug_argument(parser: argparse.ArgumentParser, default: object) -> None:
    """`--debug`, accepted before or after the subcommand."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help=f"show the full traceback of an unexpected error (or set {DEBUG_VARIABLE}=1)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="lienzo", description="Stable Diffusion, built whole.")
    parser.add_argument("--version", action="version", version=f"lienzo {version()}")
    add_debug_argument(parser, default=False)
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
        add_debug_argument(sub, default=argparse.SUPPRESS)
        sub.set_defaults(run=command.run)
    return parser


def debug_requested(args: argparse.Namespace) -> bool:
    """True with --debug or LIENZO_DEBUG set to anything but empty or 0."""
    return args.debug or os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0")


def silence_stdout() -> None:
    """Point stdout at /dev/null after its reader went away, so the exit flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def report_unexpected(error: Exception, command: str) -> None:
    """One stderr line naming the failure and how to report it."""
    message = " ".join(str(error).split())
    failure = f"{type(error).__name__}: {message}" if message else type(error).__name__
    print(
        f"error: lienzo {command} failed unexpectedly with {failure}; rerun with --debug or "
        f"{DEBUG_VARIABLE}=1 for the traceback and include it in a bug report",
        file=sys.stderr,
    )


def print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one `warning:` line on stderr, like errors (--debug keeps Python's form)."""
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `lienzo` command line; a failure prints one `error:` line and returns 1, Ctrl+C returns 130."""
    args = build_parser().parse_args(argv)
    if hasattr(args, "no_weight_packing"):
        set_weight_packing(not args.no_weight_packing)
        set_cpu_attention(not args.no_cpu_attention)
    debug = debug_requested(args)
    if not debug:
        warnings.showwarning = print_warning
    try:
        status = args.run(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        silence_stdout()
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED
    except LienzoError as error:
        if debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if debug:
            traceback.print_exc()
        else:
            report_unexpected(error, args.command)
        return 1
