"""ComfyUI's HTTP API: prompts, queue, history, object_info, interrupt, models and system stats.

Every route is served bare (`/prompt`, what scripts call) and under `/api` (what the frontend calls);
the app adds the `/comfyui/api` copy for the frontend served at /comfyui/.
"""

from __future__ import annotations

import asyncio
import platform
import sys

import torch
from aiohttp import web

from lienzo.errors import InvalidArgumentError
from lienzo.graph import PromptError, object_info, validate_prompt
from lienzo.io.library import KINDS
from lienzo.server.comfy_service import PROMPT_KIND
from lienzo.server.context import ServerContext, read_json
from lienzo.server.jobs import Job

MAX_PROMPT_ID = 128


def comfy_routes(context: ServerContext) -> list[tuple[str, str, object]]:
    """(method, path, handler) of the ComfyUI routes, without prefix."""
    handlers = ComfyHandlers(context)
    return [
        ("GET", "/prompt", handlers.queue_info),
        ("POST", "/prompt", handlers.post_prompt),
        ("GET", "/queue", handlers.get_queue),
        ("POST", "/queue", handlers.post_queue),
        ("GET", "/history", handlers.get_history),
        ("POST", "/history", handlers.post_history),
        ("GET", "/history/{prompt_id}", handlers.get_history_item),
        ("GET", "/object_info", handlers.object_info),
        ("GET", "/object_info/{node_class}", handlers.object_info_one),
        ("POST", "/interrupt", handlers.interrupt),
        ("POST", "/free", handlers.free),
        ("GET", "/system_stats", handlers.system_stats),
        ("GET", "/embeddings", handlers.embeddings),
        ("GET", "/models", handlers.model_kinds),
        ("GET", "/models/{folder}", handlers.models),
    ]


def queue_entry(job: Job) -> list:
    """ComfyUI's queue/history tuple: [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
    request = job.request
    return [job.number, job.id, request["prompt"], request.get("extra_data", {}), request.get("outputs", [])]


def history_item(job: Job) -> dict:
    """ComfyUI's history entry of a finished prompt."""
    return {
        "prompt": queue_entry(job),
        "outputs": job.outputs,
        "status": {
            "status_str": "success" if job.status == "completed" else "error",
            "completed": job.status == "completed",
            "messages": job.messages,
        },
        "meta": {
            node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
            for node in job.outputs
        },
    }


def in_history(job: Job) -> bool:
    """Finished prompts that ran (a prompt cancelled before it started is not history)."""
    return job.kind == PROMPT_KIND and (job.status != "cancelled" or job.start_time is not None)


class ComfyHandlers:
    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.store = context.store

    async def queue_info(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self.context.worker.queue_remaining()}})

    async def post_prompt(self, request: web.Request) -> web.Response:
        """Validate a whole API-format prompt and queue it; the same prompt_id again is not queued twice."""
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), dict):
            return web.json_response(prompt_failure("no_prompt", "No prompt provided"), status=400)
        prompt_id = body.get("prompt_id") or self.context.new_job_id()
        if not isinstance(prompt_id, str) or len(prompt_id) > MAX_PROMPT_ID:
            return web.json_response(
                prompt_failure(
                    "invalid_prompt_id",
                    f"prompt_id must be a text of at most {MAX_PROMPT_ID} characters, such as a UUID",
                ),
                status=400,
            )
        existing = self.store.get(prompt_id)
        if existing is not None:
            return web.json_response({"prompt_id": prompt_id, "number": existing.number, "node_errors": {}})
        try:
            outputs = await asyncio.to_thread(validate_prompt, body["prompt"], self.context.environment)
        except PromptError as error:
            return web.json_response(error.payload, status=400)
        extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
        client_id = body.get("client_id") if isinstance(body.get("client_id"), str) else None
        number = body.get("number")
        if isinstance(number, bool) or not isinstance(number, int | float | None):
            raise InvalidArgumentError(f"number must be a number, got {number!r}")
        extra = {key: value for key, value in extra.items() if key not in SECRET_KEYS}
        job, _ = self.store.add(
            prompt_id,
            PROMPT_KIND,
            {"prompt": body["prompt"], "extra_data": {**extra, "client_id": client_id}, "outputs": outputs},
            client_id=client_id,
            front=body.get("front") is True,
            number=number,
        )
        self.context.worker.send_status()
        return web.json_response({"prompt_id": prompt_id, "number": job.number, "node_errors": {}})

    async def get_queue(self, request: web.Request) -> web.Response:
        running = self.store.jobs(("in_progress",))
        pending = self.store.jobs(("pending",))
        return web.json_response(
            {
                "queue_running": [queue_entry(job) for job in running if job.kind == PROMPT_KIND],
                "queue_pending": [queue_entry(job) for job in pending if job.kind == PROMPT_KIND],
            }
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if isinstance(body, dict) and body.get("clear") is True:
            self.store.cancel(None)
        if isinstance(body, dict) and isinstance(body.get("delete"), list):
            self.store.cancel([item for item in body["delete"] if isinstance(item, str)])
        self.context.worker.send_status()
        return web.Response()

    async def get_history(self, request: web.Request) -> web.Response:
        limit = _int_query(request, "max_items")
        offset = _int_query(request, "offset") or 0
        jobs = [
            job
            for job in self.store.jobs(("completed", "failed", "cancelled"), newest_first=True)
            if in_history(job)
        ]
        chosen = jobs[offset:] if limit is None else jobs[offset : offset + limit]
        return web.json_response({job.id: history_item(job) for job in reversed(chosen)})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if isinstance(body, dict) and body.get("clear") is True:
            self.store.forget(None)
        if isinstance(body, dict) and isinstance(body.get("delete"), list):
            self.store.forget([item for item in body["delete"] if isinstance(item, str)])
        return web.Response()

    async def get_history_item(self, request: web.Request) -> web.Response:
        job = self.store.get(request.match_info["prompt_id"])
        if job is None or job.status in ("pending", "in_progress") or not in_history(job):
            return web.json_response({})
        return web.json_response({job.id: history_item(job)})

    async def object_info(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(object_info, self.context.environment))

    async def object_info_one(self, request: web.Request) -> web.Response:
        info = await asyncio.to_thread(object_info, self.context.environment)
        name = request.match_info["node_class"]
        return web.json_response({name: info[name]} if name in info else {})

    async def interrupt(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        self.context.worker.interrupt_job(prompt_id if isinstance(prompt_id, str) else None)
        return web.Response()

    async def free(self, request: web.Request) -> web.Response:
        return web.Response()

    async def system_stats(self, request: web.Request) -> web.Response:
        import lienzo

        device = torch.device(self.context.config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
        return web.json_response(
            {
                "system": {
                    "os": platform.system().lower(),
                    "ram_total": 0,
                    "ram_free": 0,
                    "comfyui_version": f"lienzo {lienzo.__version__}",
                    "required_frontend_version": "1.58.1",
                    "python_version": sys.version,
                    "pytorch_version": torch.__version__,
                    "embedded_python": False,
                    "argv": sys.argv,
                },
                "devices": [
                    {
                        "name": str(device),
                        "type": device.type,
                        "index": device.index or 0,
                        "vram_total": total,
                        "vram_free": free,
                        "torch_vram_total": total,
                        "torch_vram_free": free,
                    }
                ],
            }
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([entry.name for entry in self.context.config.library.list("embeddings")])

    async def model_kinds(self, request: web.Request) -> web.Response:
        return web.json_response(list(KINDS))

    async def models(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in KINDS:
            return web.json_response({"error": f"unknown model folder {folder!r}"}, status=404)
        entries = await asyncio.to_thread(self.context.config.library.list, folder)
        return web.json_response([entry.name for entry in entries])


SECRET_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
"""extra_data keys that never reach the queue database or the history."""


def prompt_failure(kind: str, message: str, details: str = "") -> dict:
    """ComfyUI's top-level error JSON with no node errors."""
    return {
        "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
        "node_errors": {},
    }


def _int_query(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise InvalidArgumentError(f"{name} must be a whole number, got {value!r}")
    return int(value)
