"""`lienzo run`: run a ComfyUI workflow (API or UI JSON, or a PNG carrying one) without the server."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

from tqdm.auto import tqdm

from lienzo.cli.arguments import add_library_arguments, library_from_args
from lienzo.graph import ExecutionHooks, Executor, GraphEnvironment, apply_settings, load_workflow
from lienzo.graph.workflow import ui_workflow

RUN_EPILOG = """examples:
  lienzo run workflow_api.json
  lienzo run workflow.json --set 3.seed=42 --set "6.text=a blue square on a white background"
  lienzo run ComfyUI_00001_.png --output-dir outputs/again

The workflow may be ComfyUI's API format ("Export (API)"), its UI format ("Save"), or a PNG saved by
ComfyUI or by a graph run. Model names resolve in the models folder; LoadImage reads from --input-dir.
"""


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "workflow", type=Path, help="workflow .json (API or UI format) or a PNG that carries one"
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="NODE.INPUT=VALUE",
        help="override a node's input (the value is read as JSON when it parses, else as text); repeatable",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("outputs"), metavar="DIR", help="where SaveImage writes"
    )
    parser.add_argument(
        "--input-dir", type=Path, default=Path("."), metavar="DIR", help="where LoadImage reads"
    )
    add_library_arguments(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


class ProgressHooks(ExecutionHooks):
    """A tqdm bar per node that reports progress (the sampler's steps)."""

    def __init__(self, prompt: dict, quiet: bool):
        self.prompt = prompt
        self.quiet = quiet
        self.bar: tqdm | None = None

    def executing(self, prompt_id: str, node_id: str | None) -> None:
        self.close()

    def progress(self, prompt_id: str, node_id: str, value: int, maximum: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.bar = tqdm(
                total=maximum, desc=f"{node_id} {self.prompt[node_id]['class_type']}", leave=False
            )
        self.bar.update(value - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_workflow(args: argparse.Namespace) -> int:
    """Load, override, validate and run the workflow; print the files written and any scores."""
    prompt = apply_settings(load_workflow(args.workflow), args.settings)
    workflow = ui_workflow(args.workflow)
    extra = {} if workflow is None else {"workflow": workflow}
    output = args.output_dir
    environment = GraphEnvironment(library_from_args(args), args.input_dir, output, output / "temp")
    hooks = ProgressHooks(prompt, args.quiet)
    try:
        results = Executor(environment).execute(
            prompt, prompt_id=uuid.uuid4().hex, hooks=hooks, extra_pnginfo=extra
        )
    finally:
        hooks.close()
    for node_id, ui in results.items():
        for image in ui.get("images", []):
            print(environment.folder(image["type"]) / image["subfolder"] / image["filename"])
        for entry in ui.get("scores", []):
            print(f"{node_id} {prompt[node_id]['class_type']}: {entry['report']}")
    return 0
