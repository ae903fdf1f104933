"""The aiohttp application: routes of both APIs, the websocket, access control, and how it is started."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import uuid
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from lienzo.errors import LienzoError, ModelNotFoundError
from lienzo.graph import GraphEnvironment
from lienzo.server.a1111_controlnet_routes import add_a1111_controlnet_routes
from lienzo.server.a1111_routes import add_a1111_routes
from lienzo.server.a1111_service import A1111Service
from lienzo.server.comfy_routes import comfy_routes
from lienzo.server.comfy_service import PROMPT_KIND, ComfyService
from lienzo.server.config import ServerConfig
from lienzo.server.context import ServerContext
from lienzo.server.events import Hub
from lienzo.server.file_routes import file_routes
from lienzo.server.files import ForbiddenPathError
from lienzo.server.frontend_routes import add_frontend, frontend_api_routes, internal_routes
from lienzo.server.jobs import JobStore
from lienzo.server.jobs_routes import jobs_routes
from lienzo.server.page_routes import add_page
from lienzo.server.worker import Worker

log = logging.getLogger("lienzo.server")

API_PREFIXES = ("", "/api", "/comfyui/api")
"""ComfyUI routes are served bare (scripts), under /api (the frontend at /) and under /comfyui/api (the
frontend served at /comfyui/, whose API base is its page's folder)."""
FRONTEND_MOUNT = "/comfyui"
CONTEXT = web.AppKey("context", ServerContext)
TOKEN_COOKIE = "lienzo_token"
BODY_OVERHEAD = 2**20
"""Room for multipart headers and JSON around an upload of the largest allowed size."""
SERVER_FEATURES = {"supports_preview_metadata": False, "max_upload_size": 0}


def build_context(config: ServerConfig) -> ServerContext:
    """The queue, hub, worker and both API services for these settings (folders are created)."""
    config.make_folders()
    store = JobStore(config.database)
    hub = Hub()
    folders = (config.input_dir, config.output_dir, config.temp_dir)
    environment = GraphEnvironment(config.library, *folders, preview_method=config.preview_method)
    comfy = ComfyService(environment, hub)
    a1111 = A1111Service(config)
    runners = {PROMPT_KIND: comfy.run, "txt2img": a1111.run, "img2img": a1111.run}
    worker = Worker(store, hub, runners, {PROMPT_KIND: comfy.finish})
    return ServerContext(config, store, hub, worker, environment, comfy, a1111)


def build_app(config: ServerConfig) -> web.Application:
    """The application; the worker thread starts and stops with it."""
    context = build_context(config)
    app = web.Application(
        client_max_size=config.max_upload_bytes * 4 // 3 + BODY_OVERHEAD,
        middlewares=[access_middleware(config.token), error_middleware],
    )
    app[CONTEXT] = context
    api = comfy_routes(context) + file_routes(context) + jobs_routes(context) + frontend_api_routes(context)
    for prefix in API_PREFIXES:
        for method, path, handler in api:
            app.router.add_route(method, prefix + path, handler)
    for prefix in ("", FRONTEND_MOUNT):
        app.router.add_get(prefix + "/ws", websocket_handler(context))
        for method, path, handler in internal_routes(context):
            app.router.add_route(method, prefix + path, handler)
    add_a1111_routes(app, context)
    add_a1111_controlnet_routes(app, context)
    add_frontend(app, FRONTEND_MOUNT)
    add_page(app)
    app.on_startup.append(_start_worker)
    app.on_cleanup.append(_stop_worker)
    return app


async def _start_worker(app: web.Application) -> None:
    context: ServerContext = app[CONTEXT]
    context.hub.bind(asyncio.get_running_loop())
    context.worker.start()


async def _stop_worker(app: web.Application) -> None:
    context: ServerContext = app[CONTEXT]
    context.worker.stop()
    await asyncio.to_thread(context.worker.join, 30)
    for socket in list(context.hub.sockets.values()):
        await socket.close()
    context.store.close()


def websocket_handler(context: ServerContext):
    """ComfyUI's /ws: `status` with the client id on connect, then the hub's messages; answers the
    frontend's `feature_flags`."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(heartbeat=30)
        await socket.prepare(request)
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        previous = context.hub.sockets.get(client_id)
        if previous is not None:
            await previous.close()
        context.hub.sockets[client_id] = socket
        try:
            status = {"exec_info": {"queue_remaining": context.worker.queue_remaining()}}
            await socket.send_json({"type": "status", "data": {"status": status, "sid": client_id}})
            async for message in socket:
                if message.type == WSMsgType.TEXT and _message_type(message.data) == "feature_flags":
                    features = {**SERVER_FEATURES, "max_upload_size": context.config.max_upload_bytes}
                    await socket.send_json({"type": "feature_flags", "data": features})
        finally:
            if context.hub.sockets.get(client_id) is socket:
                del context.hub.sockets[client_id]
        return socket

    return handler


def _message_type(text: str) -> str | None:
    try:
        message = json.loads(text)
    except ValueError:
        return None
    return message.get("type") if isinstance(message, dict) else None


def access_middleware(token: str | None):
    """With a token, every request (websocket included) needs `Authorization: Bearer T`, `?token=T` or the
    cookie a `?token=` visit sets (so the frontend's own requests pass); compared in constant time."""
    expected = None if token is None else token.encode()

    @web.middleware
    async def middleware(request: web.Request, handler):
        if expected is None:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        query = request.query.get("token", "")
        given = [
            header[7:] if header.startswith("Bearer ") else "",
            query,
            request.cookies.get(TOKEN_COOKIE, ""),
        ]
        if not any(hmac.compare_digest(item.encode(), expected) for item in given if item):
            return web.json_response(
                {"error": "unauthorized: send Authorization: Bearer <token> or ?token="}, status=401
            )
        response = await handler(request)
        if query and isinstance(response, web.Response) and not response.prepared:
            response.set_cookie(TOKEN_COOKIE, query, httponly=True, samesite="Strict")
        return response

    return middleware


@web.middleware
async def error_middleware(request: web.Request, handler):
    """A user's mistake is a 4xx with its message (403 for a path outside its folder, 404 for an unknown
    model); anything unexpected is logged and answered 500."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except ForbiddenPathError as error:
        return _error_response(request, error, 403)
    except ModelNotFoundError as error:
        return _error_response(request, error, 404)
    except LienzoError as error:
        return _error_response(request, error, 400)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": "internal server error; see the server log"}, status=500)


def _error_response(request: web.Request, error: Exception, status: int) -> web.Response:
    message = str(error)
    if request.path.startswith(("/sdapi/", "/controlnet/")):
        return web.json_response(
            {"error": type(error).__name__, "detail": message, "errors": message}, status=status
        )
    body = {
        "error": {"type": "invalid_request", "message": message, "details": "", "extra_info": {}},
        "node_errors": {},
    }
    return web.json_response(body, status=status)


@dataclass
class ServerHandle:
    """A server running in a background thread (tests, notebooks): its URL and how to stop it."""

    url: str
    context: ServerContext
    _loop: asyncio.AbstractEventLoop
    _runner: web.AppRunner
    _thread: threading.Thread

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


def start_server(config: ServerConfig) -> ServerHandle:
    """Start the server in a background thread and return once it listens (port 0 = a free port)."""
    app = build_app(config)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()
    failure: list[BaseException] = []
    port: list[int] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, config.host, config.port)
            loop.run_until_complete(site.start())
            port.append(site._server.sockets[0].getsockname()[1])
        except BaseException as error:
            failure.append(error)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="lienzo-server", daemon=True)
    thread.start()
    started.wait()
    if failure:
        raise failure[0]
    return ServerHandle(f"http://{config.host}:{port[0]}", app[CONTEXT], loop, runner, thread)


def run_server(config: ServerConfig) -> None:
    """Serve until interrupted (the `lienzo serve` command)."""
    app = build_app(config)
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        access_log=None,
        print=lambda _: print(f"lienzo serve: listening on http://{config.host}:{config.port}"),
    )
