"""A1111's web API under /sdapi/v1: generation goes through the shared queue, the rest reads the library."""

from __future__ import annotations

import asyncio
import base64
import json
import time

from aiohttp import web

from lienzo.diffusion import SAMPLERS, SCHEDULERS
from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.metadata import PARAMETERS_KEY, SCHEDULE_DISPLAY_NAMES, parse_parameters
from lienzo.pipelines.steps import decode_latents
from lienzo.server.a1111_request import decode_image, encode_image, read_request, with_seed
from lienzo.server.context import ServerContext, read_json
from lienzo.server.jobs import now_ms

PREFIX = "/sdapi/v1"


def add_a1111_routes(app: web.Application, context: ServerContext) -> None:
    """Register the /sdapi/v1 routes."""
    handlers = A1111Handlers(context)
    routes = [
        ("POST", "/txt2img", handlers.txt2img),
        ("POST", "/img2img", handlers.img2img),
        ("GET", "/options", handlers.get_options),
        ("POST", "/options", handlers.set_options),
        ("GET", "/samplers", handlers.samplers),
        ("GET", "/schedulers", handlers.schedulers),
        ("GET", "/sd-models", handlers.sd_models),
        ("GET", "/sd-vae", handlers.sd_vae),
        ("GET", "/loras", handlers.loras),
        ("GET", "/embeddings", handlers.embeddings),
        ("GET", "/progress", handlers.progress),
        ("POST", "/interrupt", handlers.interrupt),
        ("POST", "/skip", handlers.skip),
        ("POST", "/png-info", handlers.png_info),
        ("POST", "/refresh-checkpoints", handlers.refresh),
        ("POST", "/refresh-loras", handlers.refresh),
        ("POST", "/refresh-vae", handlers.refresh),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, PREFIX + path, handler)


class A1111Handlers:
    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.service = context.a1111

    async def txt2img(self, request: web.Request) -> web.Response:
        return await self._generate(request, "txt2img")

    async def img2img(self, request: web.Request) -> web.Response:
        return await self._generate(request, "img2img")

    async def _generate(self, request: web.Request, mode: str) -> web.Response:
        """Check the body, queue it, wait for the worker, answer with A1111's response."""
        body = with_seed(await read_json(request))
        options = self.service.options
        await asyncio.to_thread(read_request, mode, body, options["sd_model_checkpoint"], options)
        stored = {key: value for key, value in body.items() if key not in ("init_images", "mask")}
        job_id = self.context.new_job_id()
        waiter = self.context.hub.waiter(job_id)
        self.context.store.add(job_id, mode, body)
        self.context.worker.send_status()
        await waiter
        job = self.context.store.get(job_id)
        if job.status != "completed":
            error = job.error or {}
            status = {"user": 400, "interrupted": 409}.get(error.get("kind"), 500)
            message = error.get("message", job.status)
            return web.json_response(
                {"error": job.status, "detail": message, "errors": message}, status=status
            )
        folder = self.context.config.output_dir
        images = []
        if body.get("send_images", True) is not False:
            images = [
                base64.b64encode((folder / item["subfolder"] / item["filename"]).read_bytes()).decode("ascii")
                for item in job.outputs["images"]
            ]
        return web.json_response(
            {"images": images, "parameters": stored, "info": json.dumps(job.outputs["info"])}
        )

    async def get_options(self, request: web.Request) -> web.Response:
        return web.json_response(self.service.options)

    async def set_options(self, request: web.Request) -> web.Response:
        self.service.set_options(await read_json(request))
        return web.json_response(None)

    async def samplers(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "name": info.a1111_name or name,
                    "aliases": [name],
                    "options": {
                        key: value
                        for key, value in info.options.items()
                        if isinstance(value, int | float | str) and value not in (float("inf"),)
                    },
                }
                for name, info in SAMPLERS.items()
            ]
        )

    async def schedulers(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "name": name,
                    "label": SCHEDULE_DISPLAY_NAMES.get(name, name),
                    "aliases": None,
                    "default_rho": None,
                    "need_inner_model": False,
                }
                for name in SCHEDULERS
            ]
        )

    async def sd_models(self, request: web.Request) -> web.Response:
        entries = self.context.config.library.list("checkpoints")
        return web.json_response(
            [
                {
                    "title": entry.name,
                    "model_name": entry.name,
                    "hash": None,
                    "sha256": None,
                    "filename": entry.name,
                    "config": None,
                }
                for entry in entries
            ]
        )

    async def sd_vae(self, request: web.Request) -> web.Response:
        entries = self.context.config.library.list("vae")
        return web.json_response([{"model_name": entry.name, "filename": entry.name} for entry in entries])

    async def loras(self, request: web.Request) -> web.Response:
        entries = self.context.config.library.list("loras")
        return web.json_response(
            [
                {"name": entry.name, "alias": entry.name, "path": entry.name, "metadata": {}}
                for entry in entries
            ]
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        entries = self.context.config.library.list("embeddings")
        return web.json_response({"loaded": {entry.name: {} for entry in entries}, "skipped": {}})

    async def progress(self, request: web.Request) -> web.Response:
        """A1111's /progress: fraction done, ETA, state, and (unless skipped) a preview of the x0 guess."""
        worker, progress = self.context.worker, self.context.worker.progress
        running = worker.current is not None
        done = 0.0
        if running and progress.steps:
            done = (progress.job_no + progress.step / progress.steps) / max(1, progress.job_count)
        elapsed = time.time() - progress.started if running and progress.started else 0.0
        eta = elapsed / done - elapsed if done > 0 else 0.0
        preview = None
        skip_image = request.query.get("skip_current_image", "false").lower() == "true"
        if running and not skip_image and progress.denoised is not None and progress.vae is not None:
            image = await asyncio.to_thread(decode_latents, progress.vae, progress.denoised)
            preview = encode_image(image[0])
        return web.json_response(
            {
                "progress": done,
                "eta_relative": eta,
                "state": {
                    "skipped": progress.skipped,
                    "interrupted": progress.interrupted,
                    "job": worker.current.id if running else "",
                    "job_count": self.context.worker.queue_remaining(),
                    "job_timestamp": str(now_ms()),
                    "job_no": progress.job_no,
                    "sampling_step": progress.step,
                    "sampling_steps": progress.steps,
                },
                "current_image": preview,
                "textinfo": None,
            }
        )

    async def interrupt(self, request: web.Request) -> web.Response:
        self.context.worker.interrupt_job()
        return web.json_response(None)

    async def skip(self, request: web.Request) -> web.Response:
        if self.context.worker.current is not None:
            self.context.worker.skip.set()
        return web.json_response(None)

    async def png_info(self, request: web.Request) -> web.Response:
        """The text chunks of a base64 PNG, and its `parameters` read into fields."""
        body = await read_json(request)
        if not isinstance(body, dict) or "image" not in body:
            raise InvalidArgumentError('png-info takes {"image": <base64 PNG>}')
        image = decode_image(body["image"], "image")
        chunks = {key: value for key, value in image.info.items() if isinstance(value, str)}
        text = chunks.get(PARAMETERS_KEY, "")
        items = {key: value for key, value in chunks.items() if key != PARAMETERS_KEY}
        parameters = parse_parameters(text) if text else {}
        return web.json_response({"info": text, "items": items, "parameters": parameters})

    async def refresh(self, request: web.Request) -> web.Response:
        return web.json_response(None)
