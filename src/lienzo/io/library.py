"""Where users' model files live: one models root, its per-kind folders, and one way to turn a name
into a file, shared by the CLI, the Python API, the graph and the server.

A name is what ComfyUI and A1111 show in their model lists: a file's path relative to its kind's
folder, without the suffix ("sd15", "style/ink", "ink.ckpt"). Names never leave the searched folders
unless the library allows plain paths (the CLI does; the server does not).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

from lienzo.errors import InvalidArgumentError, ModelNotFoundError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 with the `tomli` dependency
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

BUILTIN_ROOT = Path(__file__).resolve().parent.parent / "builtin"
"""The installed package's folder of built-in models and example adapters."""
BUILTIN_NAME = "shapes-v2"
"""The default built-in model's checkpoint name: shapes-v2, 16 latent channels (docs/training.md)."""
BUILTIN_FOLDER = BUILTIN_ROOT / BUILTIN_NAME
"""The default built-in model's diffusers folder, what `lienzo.load()` reads."""
BUILTIN_MODELS: dict[str, tuple[tuple[str, Path], ...]] = {
    "checkpoints": ((BUILTIN_NAME, BUILTIN_FOLDER), ("shapes-v1", BUILTIN_ROOT / "shapes-v1")),
    "controlnet": (
        ("shapes-v2-canny", BUILTIN_ROOT / "shapes-v2-canny"),
        ("shapes-v1-canny", BUILTIN_ROOT / "shapes-v1-canny"),
    ),
    "loras": (("star", BUILTIN_ROOT / "examples" / "star.safetensors"),),
    "embeddings": (("star-embedding", BUILTIN_ROOT / "examples" / "star-embedding.safetensors"),),
}
"""The built-in models by kind: each one's name and diffusers folder or file, the default first. shapes-v1
is the 4-channel predecessor; each canny ControlNet is for the model it is named after, the star LoRA
and embedding are for shapes-v2."""

KIND_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints", "Stable-diffusion"),
    "loras": ("loras", "Lora", "LyCORIS"),
    "embeddings": ("embeddings",),
    "hypernetworks": ("hypernetworks",),
    "controlnet": ("controlnet", "ControlNet", "t2i_adapter"),
    "vae": ("vae", "VAE"),
    "upscale_models": ("upscale_models",),
    "vae_approx": ("vae_approx", "VAE-approx"),
}
"""Each kind's sub-folders of the models root: ComfyUI's name first, then A1111's. A1111 also keeps
`embeddings/` beside its models folder, which is searched after these; ComfyUI also reads ControlNets
from `t2i_adapter/`."""

KINDS = tuple(KIND_FOLDERS)

TRAINING_STATE = "training_state.pt"
"""The file a training run keeps in its run folder (lienzo.training.checkpoint.CHECKPOINT_NAME)."""

KIND_SUFFIXES: dict[str, tuple[str, ...]] = {
    "checkpoints": (".safetensors", ".ckpt", ".pt", ".bin"),
    "loras": (".safetensors", ".pt", ".bin", ".ckpt"),
    "embeddings": (".safetensors", ".pt", ".bin", ".ckpt"),
    "hypernetworks": (".pt", ".safetensors"),
    "controlnet": (".safetensors", ".pth", ".pt", ".ckpt", ".bin"),
    "vae": (".safetensors", ".pt", ".ckpt", ".bin"),
    "upscale_models": (".pth", ".pt", ".safetensors"),
    "vae_approx": (".safetensors", ".pth", ".pt"),
}
"""File suffixes a kind accepts, most preferred first: with two files of one name, the earlier wins."""

FOLDER_MODEL = ""
"""The "suffix" of a model that is a folder (a diffusers folder); it ranks after every file suffix."""

KIND_LABELS = {
    "checkpoints": "checkpoint",
    "loras": "LoRA",
    "embeddings": "embedding",
    "hypernetworks": "hypernetwork",
    "controlnet": "ControlNet",
    "vae": "VAE",
    "upscale_models": "upscale model",
    "vae_approx": "preview decoder (TAESD)",
}
"""How messages name one model of a kind."""

KIND_ALIASES = {
    "checkpoint": "checkpoints",
    "model": "checkpoints",
    "lora": "loras",
    "lycoris": "loras",
    "embedding": "embeddings",
    "hypernetwork": "hypernetworks",
    "upscale_model": "upscale_models",
    "upscaler": "upscale_models",
}

CONFIG_VARIABLE = "LIENZO_CONFIG"
"""Environment variable naming the config file to read (instead of the search below)."""
LOCAL_CONFIG = "lienzo.toml"
"""Config file name looked for in the current folder."""
INSTALL_KEYS = ("root", "a1111", "comfyui")
"""`[models]` keys that set the models root; at most one of them may be given."""


def normalize_kind(kind: str) -> str:
    """The kind's canonical name ("lora" -> "loras"); an unknown kind is an InvalidArgumentError."""
    name = str(kind).strip().lower().replace("-", "_")
    name = KIND_ALIASES.get(name, name)
    if name not in KIND_FOLDERS:
        raise InvalidArgumentError(f"unknown model kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return name


def is_folder_model(path: Path, kind: str) -> bool:
    """True when the folder is a whole model of this kind: a diffusers pipeline for checkpoints, a
    diffusers model folder (config.json + diffusion_pytorch_model.*) for vae and controlnet."""
    if kind == "checkpoints":
        return (path / "model_index.json").is_file()
    if kind in ("vae", "controlnet"):
        return (path / "config.json").is_file() and any(path.glob("diffusion_pytorch_model.*"))
    return False


@dataclass(frozen=True)
class Entry:
    """One model in the library: the name that resolves to it, its path, and its kind."""

    name: str
    path: Path
    kind: str


@dataclass(frozen=True)
class _Candidate:
    """The files (by suffix) that share one relative name in one searched folder."""

    order: int
    folder: Path
    parts: tuple[str, ...]
    files: tuple[tuple[str, Path], ...]

    @property
    def name(self) -> str:
        return "/".join(self.parts)

    def pick(self, suffix: str | None) -> Path | None:
        """The file with this suffix, or the preferred one (suffix None)."""
        if suffix is None:
            return self.files[0][1]
        return next((path for found, path in self.files if found == suffix), None)


@dataclass(frozen=True)
class ModelLibrary:
    """The models root and optional per-kind folders that replace the root's sub-folders for a kind.

    `allow_paths=False` (the default, and the server's setting) keeps every resolved name inside the
    searched folders, symlinks resolved; `allow_paths=True` (the CLI's) also accepts plain paths."""

    root: Path = Path("models")
    checkpoints: Path | None = None
    loras: Path | None = None
    embeddings: Path | None = None
    hypernetworks: Path | None = None
    controlnet: Path | None = None
    vae: Path | None = None
    upscale_models: Path | None = None
    vae_approx: Path | None = None
    allow_paths: bool = False
    builtin: bool = field(default=True, repr=False)
    """List and resolve the built-in models and example adapters by name (BUILTIN_MODELS)."""

    def __post_init__(self) -> None:
        for name in ("root", *KINDS):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(os.fspath(value)).expanduser())

    def folders(self, kind: str) -> tuple[Path, ...]:
        """Every folder searched for a kind, in order (earlier folders win a name found in several)."""
        kind = normalize_kind(kind)
        override = getattr(self, kind)
        if override is not None:
            return (override,)
        folders = [self.root / sub for sub in KIND_FOLDERS[kind]]
        if kind == "embeddings":
            parent = self.root.parent if self.root.name not in ("", ".", "..") else self.root.resolve().parent
            folders.append(parent / "embeddings")
        unique: list[Path] = []
        seen: set[str] = set()
        for folder in folders:
            key = os.path.normcase(os.path.realpath(folder))
            if key not in seen:
                seen.add(key)
                unique.append(folder)
        return tuple(unique)

    def list(self, kind: str) -> list[Entry]:
        """Every model of a kind, by name (with the built-in model among the checkpoints)."""
        kind = normalize_kind(kind)
        entries = []
        for candidate in self._candidates(kind):
            for index, (suffix, path) in enumerate(candidate.files):
                if not self.allow_paths and not inside(path, candidate.folder):
                    continue
                name = candidate.name if index == 0 else candidate.name + (suffix or "/")
                entries.append(Entry(name, path, kind))
        return entries

    def resolve(self, kind: str, name: str | os.PathLike) -> Path:
        """The file (or model folder) a name means.

        The name is a stem or a relative path, with or without a suffix, found in the kind's folders
        and their sub-folders ("ink" finds `loras/style/ink.safetensors`); a name ending in "/" means
        a model folder. A name that equals a model's whole relative path wins (earliest folder
        first); otherwise exactly one sub-folder match must remain, or the name is ambiguous
        (InvalidArgumentError). Not found: ModelNotFoundError naming every folder searched. With
        `allow_paths`, an existing path resolves to itself; without, absolute names, `..` and files
        outside the searched folders (symlinks resolved) are refused."""
        kind = normalize_kind(kind)
        text = os.fspath(name)
        if not isinstance(text, str) or not text.strip() or "\0" in text:
            raise InvalidArgumentError(f"a {KIND_LABELS[kind]} name must be a non-empty text, got {name!r}")
        if self.allow_paths:
            given = Path(text).expanduser()
            if given.exists():
                return given
            if given.is_absolute():
                raise ModelNotFoundError(f"no {KIND_LABELS[kind]} file at {given}: the path does not exist")
        else:
            refuse_path_name(text, kind)
        parts = tuple(part for part in text.replace("\\", "/").split("/") if part not in ("", "."))
        if ".." in parts:
            raise ModelNotFoundError(f"no {KIND_LABELS[kind]} file at {text}: the path does not exist")
        candidates = self._candidates(kind)
        folder_only = text.endswith(("/", "\\"))  # "model/": the model folder, not model.safetensors
        readings = [(parts, FOLDER_MODEL)] if folder_only else list(name_readings(parts, kind))
        for stem_parts, suffix in readings:
            matches = select(candidates, stem_parts, suffix)
            if len(matches) == 1:
                candidate, path = matches[0]
                if not self.allow_paths and not inside(path, candidate.folder):
                    raise InvalidArgumentError(
                        f"the {KIND_LABELS[kind]} name {text!r} leads outside {candidate.folder.absolute()} "
                        "(through a symlink); refused. Move the file into the folder, or name the folder it "
                        "is in as the models folder"
                    )
                return path
            if len(matches) > 1:
                listing = "; ".join(f"{candidate.name} ({path})" for candidate, path in matches)
                raise InvalidArgumentError(
                    f"the {KIND_LABELS[kind]} name {text!r} is ambiguous: it matches {listing}; "
                    "give the whole relative path of the one you mean"
                )
        raise ModelNotFoundError(self._not_found_message(kind, text, candidates))

    def _candidates(self, kind: str) -> list[_Candidate]:
        """Every model of a kind, grouped by relative name, in search order."""
        candidates = []
        folders = self.folders(kind)
        for order, folder in enumerate(folders):
            groups: dict[tuple[str, ...], list[tuple[str, Path]]] = {}
            for parts, suffix, path in walk_models(folder, kind):
                groups.setdefault(parts, []).append((suffix, path))
            ranking = (*KIND_SUFFIXES[kind], FOLDER_MODEL)
            for parts in sorted(groups):
                files = sorted(groups[parts], key=lambda item: (ranking.index(item[0]), str(item[1])))
                candidates.append(_Candidate(order, folder, parts, tuple(files)))
        for name, path in self.builtin_models(kind):
            builtin = ((path.suffix.lower() if path.is_file() else FOLDER_MODEL, path),)
            candidates.append(_Candidate(len(folders), path.parent, (name,), builtin))
        return candidates

    def builtin_models(self, kind: str) -> list[tuple[str, Path]]:
        """The built-in models of a kind that this install has (none when built-ins are off)."""
        if not self.builtin:
            return []
        models = BUILTIN_MODELS.get(kind, ())
        return [(name, path) for name, path in models if path.is_file() or is_folder_model(path, kind)]

    def _not_found_message(self, kind: str, text: str, candidates: list[_Candidate]) -> str:
        """What was searched, what is close, and how to fix it, in one line."""
        searched = ", ".join(
            str(folder.absolute()) + ("" if folder.is_dir() else " (does not exist)")
            for folder in self.folders(kind)
        )
        message = f"no {KIND_LABELS[kind]} named {text!r}; searched {searched}"
        builtins = [name for name, _ in self.builtin_models(kind)]
        if builtins:
            message += f" and the built-in {', '.join(builtins)}"
        known = {candidate.name for candidate in candidates}
        known |= {candidate.parts[-1] for candidate in candidates}
        close = difflib.get_close_matches(text, sorted(known), n=5, cutoff=0.6)
        if close:
            message += f"; close matches: {', '.join(close)}"
        suffixes = ", ".join(KIND_SUFFIXES[kind])
        return (
            f"{message}. Put the file ({suffixes}) in one of those folders, or point the models folder "
            f"(--models-dir, or `[models] root` or `{kind}` in {LOCAL_CONFIG}) at the one that holds it"
        )


def refuse_path_name(text: str, kind: str) -> None:
    """Refuse absolute names and names with `..` (the server's names must stay in the model folders)."""
    unix = PurePosixPath(text.replace("\\", "/"))
    windows = PureWindowsPath(text)
    if unix.is_absolute() or windows.is_absolute() or windows.drive or ".." in unix.parts:
        raise InvalidArgumentError(
            f"the {KIND_LABELS[kind]} name {text!r} is a path; give a name relative to the model "
            "folders (no '..', not absolute)"
        )


def name_readings(parts: tuple[str, ...], kind: str) -> Iterator[tuple[tuple[str, ...], str | None]]:
    """(stem parts, required suffix or None) for each way to read a name: "ink.pt" is first the
    stem "ink" with suffix .pt, then a stem "ink.pt" with any suffix."""
    if not parts:
        return
    last = parts[-1]
    for suffix in KIND_SUFFIXES[kind]:
        if last.lower().endswith(suffix) and len(last) > len(suffix):
            yield (*parts[:-1], last[: -len(suffix)]), suffix
            break
    yield parts, None


def select(
    candidates: list[_Candidate], parts: tuple[str, ...], suffix: str | None
) -> list[tuple[_Candidate, Path]]:
    """The whole-name match from the earliest folder, else every sub-folder match."""
    usable = [(candidate, path) for candidate in candidates if (path := candidate.pick(suffix)) is not None]
    exact = [(candidate, path) for candidate, path in usable if candidate.parts == parts]
    if exact:
        return [min(exact, key=lambda item: item[0].order)]
    count = len(parts)
    return [
        (candidate, path)
        for candidate, path in usable
        if len(candidate.parts) > count and candidate.parts[-count:] == parts
    ]


def is_training_run(folder: Path) -> bool:
    """True for a fine-tuning run's folder (it holds the training loop's TRAINING_STATE file): its
    checkpoints and latent caches are not models, so the library neither lists nor loads them."""
    return (folder / TRAINING_STATE).is_file()


def walk_models(folder: Path, kind: str) -> Iterator[tuple[tuple[str, ...], str, Path]]:
    """(relative name parts, suffix, path) of every model file or model folder under a folder,
    following symlinked folders once, skipping hidden entries, training run folders and the insides of
    model folders."""
    if not folder.is_dir():
        return
    suffixes = KIND_SUFFIXES[kind]
    seen = {os.path.realpath(folder)}
    for directory, subdirectories, files in os.walk(folder, followlinks=True):
        base = Path(directory)
        relative = base.relative_to(folder).parts
        kept = []
        for sub in sorted(subdirectories):
            path = base / sub
            real = os.path.realpath(path)
            if sub.startswith(".") or real in seen or is_training_run(path):
                continue
            seen.add(real)
            if is_folder_model(path, kind):
                yield (*relative, sub), FOLDER_MODEL, path
            else:
                kept.append(sub)
        subdirectories[:] = kept
        for file in sorted(files):
            suffix = next((s for s in suffixes if file.lower().endswith(s) and len(file) > len(s)), None)
            path = base / file
            if suffix is None or file.startswith(".") or not path.is_file():
                continue
            yield (*relative, file[: -len(suffix)]), suffix, path


def inside(path: Path, folder: Path) -> bool:
    """True when the path, symlinks resolved, lies in the folder, symlinks resolved."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def config_path(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    """The config file to read: $LIENZO_CONFIG, else ./lienzo.toml, else
    $XDG_CONFIG_HOME/lienzo/config.toml (~/.config/lienzo/config.toml); None when there is none."""
    environ = os.environ if environ is None else environ
    named = environ.get(CONFIG_VARIABLE, "")
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"{CONFIG_VARIABLE} names {path}, which is not a file")
        return path
    local = (cwd or Path.cwd()) / LOCAL_CONFIG
    if local.is_file():
        return local
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    user = Path(config_home).expanduser() / "lienzo" / "config.toml"
    return user if user.is_file() else None


def read_config(path: Path) -> ModelLibrary:
    """The library a config file's `[models]` table describes; relative paths are relative to the
    file's folder. Other tables are left to their readers."""
    path = Path(path)
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise InvalidArgumentError(
            f"reading {path} needs Python 3.11 or the `tomli` package; install it, or pass --models-dir"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InvalidArgumentError(f"cannot read the config file {path}: {error}") from error
    table = data.get("models", {})
    if not isinstance(table, dict):
        raise InvalidArgumentError(f"{path}: `models` must be a table ([models])")
    known = (*INSTALL_KEYS, *KINDS)
    for key, value in table.items():
        if key not in known:
            raise InvalidArgumentError(f"{path}: unknown key models.{key}; known keys: {', '.join(known)}")
        if not isinstance(value, str) or not value.strip():
            raise InvalidArgumentError(f"{path}: models.{key} must be a folder path in quotes")
    roots = [key for key in INSTALL_KEYS if key in table]
    if len(roots) > 1:
        raise InvalidArgumentError(f"{path}: give only one of models.{', models.'.join(roots)}")

    def folder(key: str) -> Path:
        return path.parent / Path(table[key]).expanduser()

    settings: dict[str, Path] = {kind: folder(kind) for kind in KINDS if kind in table}
    if roots:
        # A1111 keeps models/ and embeddings/ at its install root (embeddings are found beside
        # models/); ComfyUI keeps everything under models/.
        settings["root"] = folder(roots[0]) / "models" if roots[0] != "root" else folder("root")
    return ModelLibrary(**settings)


def library_from_config(
    environ: Mapping[str, str] | None = None, cwd: Path | None = None, **changes: object
) -> ModelLibrary:
    """The library of the config file found by `config_path` (the default library when there is
    none), with `changes` (fields of ModelLibrary that are not None) on top: flags beat the file."""
    path = config_path(environ, cwd)
    library = read_config(path) if path is not None else ModelLibrary()
    names = {item.name for item in fields(ModelLibrary)}
    unknown = set(changes) - names
    if unknown:
        raise TypeError(f"unknown ModelLibrary fields: {', '.join(sorted(unknown))}")
    return replace(library, **{key: value for key, value in changes.items() if value is not None})
