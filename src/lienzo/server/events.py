"""The websocket hub: ComfyUI's `/ws` messages to one client or all, sent from any thread.

Text frames are `{"type", "data"}`; preview frames are binary, ComfyUI's PREVIEW_IMAGE layout:
big-endian uint32 event type 1, uint32 image type (1 JPEG, 2 PNG), then the image bytes.
"""

from __future__ import annotations

import asyncio
import io
import struct
from collections import defaultdict

from aiohttp import web
from PIL import Image

PREVIEW_IMAGE = 1
JPEG = 1
PREVIEW_QUALITY = 85


def preview_frame(image: Image.Image) -> bytes:
    """A binary PREVIEW_IMAGE frame holding the image as JPEG."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
    return struct.pack(">II", PREVIEW_IMAGE, JPEG) + buffer.getvalue()


class Hub:
    """Open websockets by client id, and futures waiting for jobs to finish."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self._waiters: dict[str, list[asyncio.Future]] = defaultdict(list)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def send(self, kind: str, data: dict, client_id: str | None = None) -> None:
        """Send a text message to `client_id`, or to every client when None (thread-safe)."""
        self._schedule(self._send({"type": kind, "data": data}, client_id))

    def send_preview(self, image: Image.Image, client_id: str | None) -> None:
        """Send a binary preview frame to `client_id` (thread-safe)."""
        if client_id is None or client_id not in self.sockets:
            return
        self._schedule(self._send_bytes(preview_frame(image), client_id))

    async def _send(self, message: dict, client_id: str | None) -> None:
        targets = list(self.sockets.values()) if client_id is None else [self.sockets.get(client_id)]
        for socket in targets:
            if socket is not None and not socket.closed:
                try:
                    await socket.send_json(message)
                except ConnectionError:
                    continue

    async def _send_bytes(self, frame: bytes, client_id: str) -> None:
        socket = self.sockets.get(client_id)
        if socket is not None and not socket.closed:
            try:
                await socket.send_bytes(frame)
            except ConnectionError:
                return

    def _schedule(self, coroutine) -> None:
        if self.loop is None or self.loop.is_closed():
            coroutine.close()
            return
        asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def waiter(self, job_id: str) -> asyncio.Future:
        """A future (on the server's loop) that resolves when the job finishes."""
        future = asyncio.get_running_loop().create_future()
        self._waiters[job_id].append(future)
        return future

    def job_done(self, job_id: str) -> None:
        """Resolve the futures waiting for this job (thread-safe)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._resolve, job_id)

    def _resolve(self, job_id: str) -> None:
        for future in self._waiters.pop(job_id, []):
            if not future.done():
                future.set_result(None)
