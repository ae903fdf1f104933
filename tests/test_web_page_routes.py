"""The page's static routes: index.html at `/`, its files at `/page/NAME` with their types, nothing else."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lienzo.server.page_routes import PAGE_FOLDER, add_page


async def fetch(paths: list[str]) -> list[tuple[int, str, str]]:
    app = web.Application()
    add_page(app)
    async with TestClient(TestServer(app)) as client:
        answers = []
        for path in paths:
            response = await client.get(path)
            answers.append((response.status, response.content_type, await response.text()))
        return answers


def test_the_page_and_its_files_are_served_with_their_types_and_nothing_else():
    index, script, style, missing, outside = asyncio.run(
        fetch(["/", "/page/app.js", "/page/page.css", "/page/nothing.js", "/page/..%2Fpage_routes.py"])
    )
    assert index[:2] == (200, "text/html")
    assert '<label for="prompt">Prompt</label>' in index[2] and ">Generate</button>" in index[2]
    assert 'href="comfyui/"' in index[2]
    assert script[:2] == (200, "application/javascript") and "import" in script[2]
    assert style[:2] == (200, "text/css")
    assert missing[0] == 404 and outside[0] == 404


def test_the_page_loads_nothing_from_the_internet():
    names = sorted(path.name for path in PAGE_FOLDER.iterdir())
    expected = {"index.html", "app.js", "api.js", "gallery.js", "mask.js", "workflow.js", "page.css"}
    assert expected <= set(names)
    for status, _, text in asyncio.run(fetch([f"/page/{name}" for name in names])):
        assert status == 200
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
