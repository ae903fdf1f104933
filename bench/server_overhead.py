"""Per-job overhead of `lienzo serve` against calling the Python API on the same job.

The built-in model draws the same txt2img job (prompt, seed, size, steps) four ways, interleaved so a
busy CPU slows all of them alike: `pipe.generate` directly, A1111's POST /sdapi/v1/txt2img, the default
ComfyUI workflow run by the graph Executor directly, and the same workflow sent the way ComfyUI's example
script sends it (open /ws, POST /prompt, read until `executing` with node null; previews included). The
server runs in this process on a free loopback port; the direct calls run on one long-lived thread too,
as the server's worker does (on a busy CPU, torch's threads behave differently on the main thread).
Reported: the median seconds of each and the ratio of medians to the direct call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp

import lienzo
from lienzo.graph import Executor, GraphEnvironment
from lienzo.io.library import BUILTIN_NAME, ModelLibrary
from lienzo.server import ServerConfig, start_server

PROMPT = "a large red circle on the left on a blue background"


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def comfy_workflow(seed: int, steps: int, size: int) -> dict:
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
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench", "images": ["8", 0]}},
    }


def comfy_job(url: str, seed: int, steps: int, size: int) -> None:
    """A ComfyUI script's run: open /ws, queue the prompt, read until `executing` with node null."""

    async def session() -> None:
        client_id = str(uuid.uuid4())
        body = {"prompt": comfy_workflow(seed, steps, size), "client_id": client_id}
        async with (
            aiohttp.ClientSession() as client,
            client.ws_connect(f"{url}/ws?clientId={client_id}") as socket,
        ):
            prompt_id = (await (await client.post(f"{url}/prompt", json=body)).json())["prompt_id"]
            async for message in socket:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                if data["type"] == "executing" and data["data"] == {"node": None, "prompt_id": prompt_id}:
                    return

    asyncio.run(session())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="lienzo-bench-"))
    server = start_server(
        ServerConfig(
            output_dir=folder / "out",
            state_dir=folder / "state",
            port=0,
            library=ModelLibrary(root=folder / "models"),
        )
    )
    pipe = lienzo.load()
    caller = ThreadPoolExecutor(1)
    config = server.context.config
    executor = Executor(GraphEnvironment(config.library, folder / "input", folder / "graph", folder / "temp"))
    job = {"prompt": PROMPT, "steps": args.steps, "width": args.size, "height": args.size}
    times: dict[str, list[float]] = {"direct": [], "a1111": [], "graph": [], "comfyui": []}
    runs = {
        "direct": lambda seed: caller.submit(pipe.generate, **job, seed=seed, progress=False).result(),
        "a1111": lambda seed: post(f"{server.url}/sdapi/v1/txt2img", {**job, "seed": seed}),
        "graph": lambda seed: caller.submit(
            executor.execute, comfy_workflow(seed, args.steps, args.size), prompt_id=str(uuid.uuid4())
        ).result(),
        "comfyui": lambda seed: comfy_job(server.url, seed, args.steps, args.size),
    }
    try:
        for run in runs.values():
            run(0)
        for repeat in range(args.repeats):
            for name, run in runs.items():
                started = time.perf_counter()
                run(repeat + 1)
                times[name].append(time.perf_counter() - started)
    finally:
        caller.shutdown()
        server.stop()
    direct = statistics.median(times["direct"])
    print(f"{args.repeats} jobs each, {args.size}x{args.size}, {args.steps} steps, built-in model")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:8s} median {median:.3f} s  ratio {median / direct:.3f}  overhead {median - direct:+.3f} s"
        )


if __name__ == "__main__":
    main()
