"""What every route handler shares: settings, queue, websocket hub, worker and the two API services."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from aiohttp import web

from lienzo.errors import InvalidArgumentError
from lienzo.graph import GraphEnvironment
from lienzo.server.a1111_service import A1111Service
from lienzo.server.comfy_service import ComfyService
from lienzo.server.config import ServerConfig
from lienzo.server.events import Hub
from lienzo.server.jobs import JobStore
from lienzo.server.worker import Worker


@dataclass
class ServerContext:
    config: ServerConfig
    store: JobStore
    hub: Hub
    worker: Worker
    environment: GraphEnvironment
    comfy: ComfyService
    a1111: A1111Service

    @property
    def folders(self) -> dict:
        return {
            "input": self.config.input_dir,
            "output": self.config.output_dir,
            "temp": self.config.temp_dir,
        }

    @staticmethod
    def new_job_id() -> str:
        return str(uuid.uuid4())


async def read_json(request: web.Request) -> object:
    """The request body as JSON, whatever its Content-Type says (ComfyUI's scripts send none)."""
    raw = await request.read()
    try:
        return json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidArgumentError(f"the request body is not valid JSON ({error})") from None
