"""The server's settings: address, access token, folders, limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from lienzo.errors import InvalidArgumentError
from lienzo.graph.previews import check_preview_method
from lienzo.io.atomic import atomic_path
from lienzo.io.library import ModelLibrary
from lienzo.pipelines.safety import check_safety_mode

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8188
DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MODEL_CACHE = 2
USER_FOLDERS = ("workflows", "subgraphs")
USER_FILES = {"user.css": "", "comfy.templates.json": "[]"}
STATE_FOLDER = ".lienzo-server"
"""The state folder's name beside the output folder when --state-dir is not given."""


@dataclass(frozen=True)
class ServerConfig:
    """Where `lienzo serve` listens, who may call it, and the folders it reads and writes.

    The state folder (queue database, settings, user data) defaults to `.lienzo-server/` beside the
    output folder, so one output folder keeps its own queue and history. Inputs (uploads) and temp files
    live in the state folder's `input/` and `temp/`."""

    output_dir: Path = Path("outputs")
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    insecure: bool = False
    state_dir: Path | None = None
    library: ModelLibrary = field(default_factory=ModelLibrary)
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    model_cache: int = DEFAULT_MODEL_CACHE
    device: str | None = None
    safety_checker: str = "auto"
    """The safety checker on the images of A1111 and page jobs: auto, on or off (lienzo.pipelines.safety)."""
    preview_method: str = "auto"
    """How graph samplers draw websocket previews: auto, latent2rgb, taesd or none (lienzo.graph.previews)."""

    def __post_init__(self) -> None:
        check_safety_mode(self.safety_checker)
        check_preview_method(self.preview_method, self.library)
        object.__setattr__(self, "output_dir", Path(self.output_dir).expanduser().absolute())
        state = self.state_dir if self.state_dir is not None else self.output_dir.parent / STATE_FOLDER
        object.__setattr__(self, "state_dir", Path(state).expanduser().absolute())
        if self.library.allow_paths:
            raise InvalidArgumentError(
                "the server's model library must refuse plain paths (allow_paths=False)"
            )
        if self.max_upload_mb <= 0:
            raise InvalidArgumentError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        if self.model_cache < 1:
            raise InvalidArgumentError(f"--model-cache must be 1 or more models, got {self.model_cache}")
        if self.token is not None and not self.token.strip():
            raise InvalidArgumentError("--token must not be empty; give a long random text")
        if not is_loopback(self.host) and self.token is None and not self.insecure:
            raise InvalidArgumentError(
                f"binding to {self.host} exposes the server to the network: give --token T (clients send "
                "`Authorization: Bearer T` or ?token=T), or --insecure to allow anyone who can reach it"
            )

    @property
    def input_dir(self) -> Path:
        return self.state_dir / "input"

    @property
    def temp_dir(self) -> Path:
        return self.state_dir / "temp"

    @property
    def user_dir(self) -> Path:
        """Per-user settings and workflows of the ComfyUI frontend (single user: `default`)."""
        return self.state_dir / "user" / "default"

    @property
    def database(self) -> Path:
        return self.state_dir / "queue.sqlite3"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def make_folders(self) -> None:
        """Create the output, state, input and temp folders, and the frontend user's folders and files
        (saved workflows and subgraphs, an empty user.css and node-template list), as ComfyUI's first
        start would leave them."""
        for folder in (self.output_dir, self.state_dir, self.input_dir, self.temp_dir, self.user_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in USER_FOLDERS:
            (self.user_dir / folder).mkdir(exist_ok=True)
        for name, content in USER_FILES.items():
            if not (self.user_dir / name).exists():
                with atomic_path(self.user_dir / name) as temporary:
                    temporary.write_text(content)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
