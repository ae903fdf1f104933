"""What ComfyUI's frontend asks for besides prompts: users, settings, user data, extensions, features,
templates and the internal routes, answered minimally for one local user; and the frontend's files."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from aiohttp import web

from lienzo.errors import InvalidArgumentError
from lienzo.io.atomic import atomic_path
from lienzo.io.library import KINDS
from lienzo.server.context import ServerContext, read_json
from lienzo.server.files import ForbiddenPathError, safe_join

SETTINGS_FILE = "comfy.settings.json"
FRONTEND_PACKAGE = "comfyui_frontend_package"
FAVICON_FRAMES = "assets/images/favicon_progress_16x16"
"""The frontend asks for its progress favicon at this absolute path, outside its own folder."""
MISSING_FRONTEND = """<!doctype html><html><head><title>lienzo</title></head><body>
<h1>ComfyUI's frontend is not installed</h1>
<p>Install it with <code>pip install 'lienzo[ui]'</code> and restart <code>lienzo serve</code>.</p>
</body></html>"""


def frontend_api_routes(context: ServerContext) -> list[tuple[str, str, object]]:
    """Start-up and user-data routes, served like the other ComfyUI routes (bare and under /api)."""
    handlers = FrontendHandlers(context)
    return [
        ("GET", "/users", handlers.users),
        ("POST", "/users", handlers.add_user),
        ("GET", "/settings", handlers.settings),
        ("POST", "/settings", handlers.update_settings),
        ("GET", "/settings/{setting_id}", handlers.setting),
        ("POST", "/settings/{setting_id}", handlers.set_setting),
        ("GET", "/userdata", handlers.list_userdata),
        ("GET", "/v2/userdata", handlers.list_userdata_v2),
        ("GET", "/userdata/{file}", handlers.get_userdata),
        ("POST", "/userdata/{file}", handlers.post_userdata),
        ("DELETE", "/userdata/{file}", handlers.delete_userdata),
        ("POST", "/userdata/{file}/move/{dest}", handlers.move_userdata),
        ("GET", "/extensions", _constant([])),
        ("GET", "/i18n", _constant({})),
        ("GET", "/features", handlers.features),
        ("GET", "/workflow_templates", _constant({})),
        ("GET", "/node_replacements", _constant({})),
        ("GET", "/global_subgraphs", _constant({})),
        ("GET", "/experiment/models", handlers.experiment_models),
        ("GET", "/experiment/models/{folder}", handlers.experiment_folder),
        ("GET", "/view_metadata/{folder}", _constant({"error": "no metadata"}, 404)),
    ]


def internal_routes(context: ServerContext) -> list[tuple[str, str, object]]:
    """The frontend's /internal routes (served without the /api prefix, as ComfyUI does)."""
    handlers = FrontendHandlers(context)
    return [
        ("GET", "/internal/logs", _constant("")),
        ("GET", "/internal/logs/raw", _constant({"entries": [], "size": {"cols": 80, "rows": 24}})),
        ("PATCH", "/internal/logs/subscribe", _constant(None)),
        ("GET", "/internal/folder_paths", handlers.folder_paths),
        ("GET", "/internal/files/{kind}", handlers.internal_files),
        ("GET", "/templates/{name}", _constant([])),
    ]


def _constant(value: object, status: int = 200):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(value, status=status)

    return handler


class FrontendHandlers:
    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.user_dir = context.config.user_dir

    async def users(self, request: web.Request) -> web.Response:
        return web.json_response({"storage": "server", "migrated": True})

    async def add_user(self, request: web.Request) -> web.Response:
        return web.json_response("default")

    def _read_settings(self) -> dict:
        path = self.user_dir / SETTINGS_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def _write_settings(self, settings: dict) -> None:
        with atomic_path(self.user_dir / SETTINGS_FILE) as temporary:
            temporary.write_text(json.dumps(settings, indent=1))

    async def settings(self, request: web.Request) -> web.Response:
        return web.json_response(self._read_settings())

    async def update_settings(self, request: web.Request) -> web.Response:
        changes = await read_json(request)
        if not isinstance(changes, dict):
            raise InvalidArgumentError("settings are a JSON object of id: value")
        self._write_settings({**self._read_settings(), **changes})
        return web.Response()

    async def setting(self, request: web.Request) -> web.Response:
        return web.json_response(self._read_settings().get(request.match_info["setting_id"]))

    async def set_setting(self, request: web.Request) -> web.Response:
        value = await read_json(request)
        self._write_settings({**self._read_settings(), request.match_info["setting_id"]: value})
        return web.Response()

    def _user_path(self, name: str) -> Path:
        folder, _, filename = name.rpartition("/")
        if not filename:
            raise ForbiddenPathError(f"the user file name {name!r} is not allowed")
        return safe_join(self.user_dir, folder, filename)

    async def list_userdata(self, request: web.Request) -> web.Response:
        """Files under a user-data folder: relative paths, or {path, size, modified} with full_info."""
        folder = safe_join(self.user_dir, request.query.get("dir", ""))
        if not folder.is_dir():
            return web.json_response({"error": "no such folder"}, status=404)
        recurse = request.query.get("recurse", "").lower() == "true"
        files = sorted(
            path for path in (folder.rglob("*") if recurse else folder.iterdir()) if path.is_file()
        )
        if request.query.get("full_info", "").lower() == "true":
            return web.json_response(
                [
                    {
                        "path": path.relative_to(folder).as_posix(),
                        "size": path.stat().st_size,
                        "modified": path.stat().st_mtime,
                        "created": path.stat().st_ctime,
                    }
                    for path in files
                ]
            )
        return web.json_response([path.relative_to(folder).as_posix() for path in files])

    async def list_userdata_v2(self, request: web.Request) -> web.Response:
        folder = safe_join(self.user_dir, request.query.get("path", ""))
        if not folder.is_dir():
            return web.json_response({"error": "no such folder"}, status=404)
        return web.json_response(
            [
                {
                    "name": path.name,
                    "path": path.relative_to(self.user_dir).as_posix(),
                    "type": "directory" if path.is_dir() else "file",
                    "size": path.stat().st_size if path.is_file() else None,
                    "modified": path.stat().st_mtime,
                }
                for path in sorted(folder.iterdir())
            ]
        )

    async def get_userdata(self, request: web.Request) -> web.StreamResponse:
        path = self._user_path(request.match_info["file"])
        if not path.is_file():
            return web.json_response({"error": "no such file"}, status=404)
        return web.FileResponse(path)

    async def post_userdata(self, request: web.Request) -> web.Response:
        name = request.match_info["file"]
        path = self._user_path(name)
        if path.exists() and request.query.get("overwrite", "true").lower() == "false":
            return web.json_response({"error": "the file exists"}, status=409)
        data = await request.read()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)
        if request.query.get("full_info", "").lower() == "true":
            stat = path.stat()
            return web.json_response({"path": name, "size": stat.st_size, "modified": stat.st_mtime})
        return web.json_response(name)

    async def delete_userdata(self, request: web.Request) -> web.Response:
        path = self._user_path(request.match_info["file"])
        if not path.is_file():
            return web.json_response({"error": "no such file"}, status=404)
        path.unlink()
        return web.Response(status=204)

    async def move_userdata(self, request: web.Request) -> web.Response:
        source, target = (
            self._user_path(request.match_info["file"]),
            self._user_path(request.match_info["dest"]),
        )
        if not source.is_file():
            return web.json_response({"error": "no such file"}, status=404)
        if target.exists() and request.query.get("overwrite", "true").lower() == "false":
            return web.json_response({"error": "the destination exists"}, status=409)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
        return web.json_response(request.match_info["dest"])

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "supports_preview_metadata": False,
                "max_upload_size": self.context.config.max_upload_bytes,
                "node_replacements": False,
                "assets": False,
            }
        )

    async def experiment_models(self, request: web.Request) -> web.Response:
        library = self.context.config.library
        return web.json_response(
            [{"name": kind, "folders": [str(folder) for folder in library.folders(kind)]} for kind in KINDS]
        )

    async def experiment_folder(self, request: web.Request) -> web.Response:
        kind = request.match_info["folder"]
        if kind not in KINDS:
            return web.json_response({"error": "unknown folder"}, status=404)
        return web.json_response(
            [{"name": entry.name, "pathIndex": 0} for entry in self.context.config.library.list(kind)]
        )

    async def folder_paths(self, request: web.Request) -> web.Response:
        library = self.context.config.library
        return web.json_response({kind: [str(folder) for folder in library.folders(kind)] for kind in KINDS})

    async def internal_files(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        folder = self.context.folders.get(kind)
        if folder is None:
            return web.json_response({"error": "unknown folder"}, status=404)
        return web.json_response(sorted(path.name for path in folder.iterdir() if path.is_file()))


def frontend_folder() -> Path | None:
    """The `static/` folder of the installed comfyui-frontend-package, or None."""
    spec = importlib.util.find_spec(FRONTEND_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if (folder / "index.html").is_file() else None


def add_frontend(app: web.Application, mount: str) -> None:
    """Serve the frontend's files at `mount`/ (index.html at the folder itself), or an install hint."""
    folder = frontend_folder()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(mount + "/")

    async def page(request: web.Request) -> web.StreamResponse:
        if folder is None:
            return web.Response(text=MISSING_FRONTEND, content_type="text/html")
        name = request.match_info.get("path", "") or "index.html"
        try:
            path = safe_join(folder, *name.rsplit("/", 1)) if "/" in name else safe_join(folder, "", name)
        except ForbiddenPathError:
            raise web.HTTPForbidden() from None
        if not path.is_file() and name == "user.css":
            return web.Response(text="", content_type="text/css")
        if not path.is_file():
            raise web.HTTPNotFound()
        response = web.FileResponse(path)
        if path.suffix in (".js", ".mjs"):
            response.content_type = "application/javascript"
        if path.name == "index.html":
            response.headers["Cache-Control"] = "no-cache"
        return response

    async def favicon(request: web.Request) -> web.StreamResponse:
        if folder is None:
            raise web.HTTPNotFound()
        return web.FileResponse(safe_join(folder, FAVICON_FRAMES, request.match_info["name"]))

    app.router.add_get(mount, redirect)
    app.router.add_get(mount + "/", page)
    app.router.add_get(mount + "/{path:.+}", page)
    app.router.add_get(f"/{FAVICON_FRAMES}/{{name}}", favicon)
