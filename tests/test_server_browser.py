"""ComfyUI's own frontend (comfyui-frontend-package) in headless Chromium against `lienzo serve`: the page
at /comfyui/ loads with no failing call to the server, and a workflow queued from the page runs."""

from __future__ import annotations

import shutil
import time

import pytest

from server_client import api_workflow, serve

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("the browser tests need Debian's chromium: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_the_frontend_loads_without_failing_calls_and_runs_a_queued_workflow(chromium, tmp_path):
    pytest.importorskip("comfyui_frontend_package")
    server = serve(tmp_path)
    failing, aborted, answered = [], [], set()
    page = chromium.new_page()

    def on_response(response) -> None:
        if response.url.startswith(server.url):
            answered.add(response.url)
            if response.status >= 400:
                failing.append((response.status, response.url))

    page.on("response", on_response)
    page.on("requestfailed", lambda request: aborted.append((request.url, request.failure)))
    try:
        page.goto(f"{server.url}/comfyui/", timeout=180_000)
        page.wait_for_function("() => window.app && window.app.graph", timeout=180_000)
        node_types = page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)")
        assert {"KSampler", "CheckpointLoaderSimple", "SaveImage"} <= set(node_types)
        page.evaluate(
            "async (workflow) => { await window.app.loadApiJson(workflow, 'lienzo.json') }",
            api_workflow(steps=2, size=64),
        )
        assert page.evaluate("async () => await window.app.queuePrompt(0, 1)")
        deadline = time.time() + 300
        while time.time() < deadline:
            jobs = server.context.store.jobs()
            if jobs and all(job.status in ("completed", "failed", "cancelled") for job in jobs):
                break
            time.sleep(0.3)
        (job,) = server.context.store.jobs()
        assert job.status == "completed", job.error
        assert "workflow" in job.request["extra_data"]["extra_pnginfo"]
        (image,) = job.outputs["9"]["images"]
        page.wait_for_function(
            "(name) => [...document.images].some(image => image.src.includes(name))",
            arg=image["filename"],
            timeout=60_000,
        )
    finally:
        page.close()
        server.stop()
    ours = [(url, failure) for url, failure in aborted if url.startswith(server.url) and url not in answered]
    assert not failing, failing
    assert not ours, ours
