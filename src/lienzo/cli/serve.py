"""`lienzo serve`: ComfyUI's and A1111's HTTP APIs (and ComfyUI's frontend at /comfyui/) on one queue."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lienzo.cli.arguments import LIBRARY_FLAGS, add_cpu_kernel_arguments, add_library_arguments
from lienzo.graph.previews import PREVIEW_METHODS
from lienzo.io.library import library_from_config
from lienzo.pipelines.options import SAFETY_MODES
from lienzo.server.app import run_server
from lienzo.server.config import (
    DEFAULT_HOST,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MODEL_CACHE,
    DEFAULT_PORT,
    STATE_FOLDER,
    ServerConfig,
)

SERVE_EPILOG = """\
examples:
  lienzo serve                                   # http://127.0.0.1:8188, frontend at /comfyui/
  lienzo serve --output-dir ~/pictures/lienzo --models-dir ~/ComfyUI/models
  lienzo serve --host 0.0.0.0 --token "$(openssl rand -hex 16)"

ComfyUI clients use /prompt, /ws, /history and /view (also under /api); A1111 clients use /sdapi/v1/.
Jobs from both wait in one queue kept in the state folder, and run again after a crash. See docs/server.md.
"""


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo serve`."""
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--token", help="require this token (Authorization: Bearer T, or ?token=T)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without a token (anyone may use it)",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("outputs"), help="where images are saved (default ./outputs)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help=f"queue database, uploads, temp files, settings (default {STATE_FOLDER}/ beside --output-dir)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest accepted upload (default {DEFAULT_MAX_UPLOAD_MB} MB)",
    )
    parser.add_argument(
        "--model-cache",
        type=int,
        default=DEFAULT_MODEL_CACHE,
        help=f"checkpoints kept loaded, least recently used dropped first (default {DEFAULT_MODEL_CACHE})",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    add_cpu_kernel_arguments(parser)
    parser.add_argument(
        "--safety-checker",
        choices=SAFETY_MODES,
        default="auto",
        help="NSFW check of A1111 and page images: auto (when the model folder has one), on, off",
    )
    parser.add_argument(
        "--preview-method",
        choices=PREVIEW_METHODS,
        default="auto",
        help="live previews of graph samplers: taesd (TAESD's decoder from models/vae_approx/), latent2rgb, "
        "auto (taesd where its file is there, else latent2rgb), none",
    )
    add_library_arguments(parser)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl+C."""
    changes = {field: getattr(args, flag, None) for flag, field in LIBRARY_FLAGS.items()}
    config = ServerConfig(
        output_dir=args.output_dir,
        host=args.host,
        port=args.port,
        token=args.token,
        insecure=args.insecure,
        state_dir=args.state_dir,
        library=library_from_config(allow_paths=False, **changes),
        max_upload_mb=args.max_upload_mb,
        model_cache=args.model_cache,
        device=args.device,
        safety_checker=args.safety_checker,
        preview_method=args.preview_method,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_server(config)
    return 0
