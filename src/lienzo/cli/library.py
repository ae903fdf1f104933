"""`lienzo models`: list the models the library finds, by kind, with the name that selects each."""

from __future__ import annotations

import argparse
from pathlib import Path

from lienzo.cli.arguments import add_library_arguments, library_from_args
from lienzo.io.library import (
    BUILTIN_MODELS,
    KIND_ALIASES,
    KIND_SUFFIXES,
    KINDS,
    ModelLibrary,
    config_path,
)

MODELS_EPILOG = """\
A model's name is its path inside its kind's folder without the suffix (sub-folders included):
models/loras/style/ink.safetensors is the LoRA "style/ink", or just "ink" when no other file has that
stem. The folders come from --models-dir (and --lora-dir, ...), else from [models] in ./lienzo.toml,
~/.config/lienzo/config.toml or the file $LIENZO_CONFIG names, else ./models.
"""


def kind_argument(text: str) -> str:
    """A kind name with the singular aliases accepted ("lora" -> "loras")."""
    name = text.strip().lower().replace("-", "_")
    return KIND_ALIASES.get(name, name)


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `lienzo models`."""
    parser.add_argument(
        "--kind", type=kind_argument, choices=KINDS, help="list only this kind (default: every kind)"
    )
    add_library_arguments(parser)


def shown(path: Path) -> str:
    """A path as the listing shows it: relative to the current folder when inside it, else absolute."""
    path, here = path.absolute(), Path.cwd()
    if here != Path(here.anchor) and path.is_relative_to(here):
        return path.relative_to(here).as_posix()
    return str(path)


def size_of(path: Path) -> str:
    """A file's size, or the total of the files in a model folder ("?" when it cannot be read)."""
    try:
        if path.is_dir():
            return human_size(sum(item.stat().st_size for item in path.rglob("*") if item.is_file()))
        return human_size(path.stat().st_size)
    except OSError:
        return "?"


def human_size(size: int) -> str:
    """1536 -> "1.5 KB"."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def kind_lines(library: ModelLibrary, kind: str) -> list[str]:
    """The header and one line per model of a kind (or a line saying why there is none)."""
    folders = library.folders(kind)
    header = f"{kind} ({', '.join(shown(folder) for folder in folders)}):"
    entries = library.list(kind)
    rows = []
    for entry in entries:
        builtin = entry.path in {folder for models in BUILTIN_MODELS.values() for _, folder in models}
        where = "(built-in)" if builtin else shown(entry.path)
        rows.append((entry.name, where, size_of(entry.path)))
    lines = [header]
    if rows:
        widths = [max(len(row[column]) for row in rows) for column in range(2)]
        lines += [f"  {name:<{widths[0]}}  {where:<{widths[1]}}  {size}" for name, where, size in rows]
    suffixes = ", ".join(KIND_SUFFIXES[kind])
    if not any(folder.is_dir() for folder in folders):
        first, *others = (shown(folder) for folder in folders)
        alternatives = f" (or {', '.join(others)})" if others else ""
        lines.append(f"  no {kind} folder: create {first}{alternatives} and put {suffixes} files in it")
    elif not rows:
        lines.append(f"  no {suffixes} files found")
    return lines


def run_models(args: argparse.Namespace) -> int:
    """Print every model the library finds, kind by kind."""
    library = library_from_args(args)
    config = config_path() or "none (./lienzo.toml, ~/.config/lienzo/config.toml)"
    lines = [f"models root: {library.root.absolute()}", f"config file: {config}"]
    for kind in [args.kind] if args.kind else KINDS:
        lines += kind_lines(library, kind)
    print("\n".join(lines))
    return 0
