"""lienzo's own web page: the static files of `lienzo/server/web/` served at `/` and `/page/`."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

PAGE_FOLDER = Path(__file__).parent / "web"
PAGE_MOUNT = "/page"
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "application/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


def add_page(app: web.Application) -> None:
    """Serve index.html at `/` and the page's other files at `/page/NAME` (a flat folder, names listed)."""
    files = {path.name: path for path in PAGE_FOLDER.iterdir() if path.suffix in CONTENT_TYPES}

    async def index(request: web.Request) -> web.Response:
        return _file_response(files["index.html"])

    async def asset(request: web.Request) -> web.Response:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return _file_response(path)

    app.router.add_get("/", index)
    app.router.add_get(PAGE_MOUNT + "/{name}", asset)


def _file_response(path: Path) -> web.Response:
    return web.Response(
        body=path.read_bytes(),
        content_type=CONTENT_TYPES[path.suffix],
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )
