"""Helpers of the server tests: a server on a free loopback port, and small HTTP/websocket clients."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import aiohttp
from PIL import Image

from lienzo.io.library import BUILTIN_NAME, ModelLibrary
from lienzo.server import ServerConfig, start_server

PROMPT = "a large red circle on the left on a blue background"
STEPS = 10
SIZE = 128


def server_config(folder: Path, **changes) -> ServerConfig:
    """Settings for a test server: a free port, folders under `folder`, an empty models root."""
    values = {
        "output_dir": folder / "out",
        "state_dir": folder / "state",
        "port": 0,
        "library": ModelLibrary(root=folder / "models"),
        **changes,
    }
    return ServerConfig(**values)


def serve(folder: Path, **changes):
    return start_server(server_config(folder, **changes))


def call(
    url: str,
    body: object = None,
    *,
    method: str | None = None,
    data: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 300,
) -> tuple[int, object]:
    """(status, decoded JSON or raw bytes) of one HTTP request."""
    payload = data if data is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=payload, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, kind = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        status, raw, kind = error.code, error.read(), error.headers.get("Content-Type", "")
    if "json" in kind:
        return status, json.loads(raw) if raw else None
    return status, raw


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict]:
    """A multipart/form-data body and its Content-Type header."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, content) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + content + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64_png(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def api_workflow(prompt: str = PROMPT, *, seed: int = 1, steps: int = STEPS, size: int = SIZE) -> dict:
    """ComfyUI's default txt2img workflow (script_examples' node ids) on the built-in model."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BUILTIN_NAME}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "test", "images": ["8", 0]}},
    }


def run_over_websocket(url: str, body: dict, timeout: float = 300) -> tuple[dict, list, list[bytes]]:
    """ComfyUI's websocket client: connect, POST /prompt, read frames until `executing` with node null
    for this prompt. Returns (the /prompt answer, text messages, binary frames)."""

    async def session() -> tuple[dict, list, list[bytes]]:
        client_id = str(uuid.uuid4())
        messages, frames = [], []
        async with aiohttp.ClientSession() as client:
            async with client.ws_connect(f"{url}/ws?clientId={client_id}") as socket:
                answer = await client.post(f"{url}/prompt", data=json.dumps({**body, "client_id": client_id}))
                queued = await answer.json()
                assert answer.status == 200, queued
                async for message in socket:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        frames.append(message.data)
                        continue
                    data = json.loads(message.data)
                    messages.append(data)
                    done = data["type"] == "executing" and data["data"]["node"] is None
                    if done and data["data"]["prompt_id"] == queued["prompt_id"]:
                        break
        return queued, messages, frames

    return asyncio.run(asyncio.wait_for(session(), timeout))
