"""Per-job overhead of `lienzo serve` against calling the Python API on the same job.

The built-in model draws the same txt2img job (prompt, seed, size, steps) three ways, interleaved so a
busy CPU slows all of them alike: `pipe.generate` directly, A1111's POST /sdapi/v1/txt2img, and ComfyUI's
POST /prompt followed by waiting for its history entry. The server runs in this process on a free
loopback port; the direct calls run on one long-lived thread too, as the server's worker does (on a busy
CPU, torch's threads behave differently on the main thread). Reported: the median seconds of each and the
ratio of medians to the direct call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lienzo
from lienzo.io.library import ModelLibrary
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
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "shapes-v1"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "bench", "images": ["8", 0]}},
    }


def comfy_job(url: str, seed: int, steps: int, size: int) -> None:
    """Queue a prompt and wait (polling every 5 ms) until its history entry exists."""
    prompt_id = post(
        f"{url}/prompt", {"prompt": comfy_workflow(seed, steps, size), "prompt_id": str(uuid.uuid4())}
    )["prompt_id"]
    while True:
        with urllib.request.urlopen(f"{url}/history/{prompt_id}") as response:
            if json.loads(response.read()):
                return
        time.sleep(0.005)


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
    job = {"prompt": PROMPT, "steps": args.steps, "width": args.size, "height": args.size}
    times: dict[str, list[float]] = {"direct": [], "a1111": [], "comfyui": []}
    runs = {
        "direct": lambda seed: caller.submit(pipe.generate, **job, seed=seed, progress=False).result(),
        "a1111": lambda seed: post(f"{server.url}/sdapi/v1/txt2img", {**job, "seed": seed}),
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
