"""The job queue: order and priorities, cancelling, idempotent ids, recovery after a crash (kill -9 of a
real `lienzo serve`), and 4 concurrent clients whose 20 jobs all finish while /queue stays quick."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lienzo.server.jobs import JobStore
from server_client import PROMPT, api_workflow, call, serve

SOURCE_ROOT = Path(__file__).resolve().parent.parent / "src"


def test_jobs_run_in_number_order_with_front_first_and_ids_are_idempotent(tmp_path):
    store = JobStore(tmp_path / "queue.sqlite3")
    store.add("a", "prompt", {"n": 1})
    store.add("b", "prompt", {"n": 2})
    store.add("c", "prompt", {"n": 3}, front=True)
    again, added = store.add("a", "prompt", {"n": 99})
    assert not added and again.request == {"n": 1}
    assert store.cancel(["b"]) == ["b"]
    assert [store.claim(0).id for _ in range(2)] == ["c", "a"]
    assert store.claim(0) is None
    store.finish("c", "completed", outputs={"9": {"images": []}})
    assert store.get("c").outputs == {"9": {"images": []}} and store.get("b").status == "cancelled"


def test_a_job_cut_off_by_a_crash_runs_again_and_history_survives(tmp_path):
    store = JobStore(tmp_path / "queue.sqlite3")
    store.add("done", "prompt", {})
    store.add("running", "prompt", {})
    store.finish(store.claim(0).id, "completed")
    assert store.claim(0).id == "running"
    store.close()
    reopened = JobStore(tmp_path / "queue.sqlite3")
    assert reopened.get("done").status == "completed"
    assert reopened.claim(0).id == "running"
    reopened.add("next", "prompt", {})
    assert reopened.get("next").number > reopened.get("running").number


def test_four_clients_times_five_jobs_finish_and_the_queue_answers_quickly(tmp_path):
    server = serve(tmp_path)
    slowest = [0.0]
    stop = threading.Event()

    def watch_queue() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            assert call(f"{server.url}/queue", timeout=10)[0] == 200
            slowest[0] = max(slowest[0], time.perf_counter() - started)
            time.sleep(0.05)

    def comfy_client(index: int) -> list[str]:
        ids = []
        for job in range(5):
            body = {"prompt": api_workflow(seed=100 * index + job, steps=1, size=64)}
            status, answer = call(f"{server.url}/prompt", body)
            assert status == 200, answer
            ids.append(answer["prompt_id"])
        return ids

    def a1111_client(index: int) -> int:
        for job in range(5):
            body = {"prompt": PROMPT, "steps": 1, "width": 64, "height": 64, "seed": 100 * index + job}
            status, answer = call(f"{server.url}/sdapi/v1/txt2img", body)
            assert status == 200 and len(answer["images"]) == 1, answer
        return 5

    watcher = threading.Thread(target=watch_queue)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            comfy = [pool.submit(comfy_client, index) for index in (0, 1)]
            a1111 = [pool.submit(a1111_client, index) for index in (2, 3)]
            prompt_ids = [prompt_id for future in comfy for prompt_id in future.result()]
            assert sum(future.result() for future in a1111) == 10
        deadline = time.time() + 300
        while time.time() < deadline and len(finished(server.url, prompt_ids)) < 10:
            time.sleep(0.2)
        assert finished(server.url, prompt_ids) == {prompt_id: "success" for prompt_id in prompt_ids}
    finally:
        stop.set()
        watcher.join()
        server.stop()
    assert slowest[0] < 2.0, f"/queue took {slowest[0]:.2f} s while jobs ran"


def finished(url: str, prompt_ids: list[str]) -> dict[str, str]:
    history = call(f"{url}/history")[1]
    return {key: item["status"]["status_str"] for key, item in history.items() if key in prompt_ids}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_cli_server(folder: Path, port: int) -> subprocess.Popen:
    """`lienzo serve` in a subprocess, returned once it answers."""
    environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "lienzo.cli",
        "serve",
        "--port",
        str(port),
        "--output-dir",
        str(folder / "out"),
        "--state-dir",
        str(folder / "state"),
        "--models-dir",
        str(folder / "models"),
    ]
    process = subprocess.Popen(
        command, env=environment, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if call(f"http://127.0.0.1:{port}/prompt", timeout=2)[0] == 200:
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"lienzo serve did not start: {process.stderr.read().decode()[-2000:]}")


def test_kill_minus_nine_with_jobs_queued_then_restart_and_every_job_finishes(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_cli_server(tmp_path, port)
    prompt_ids = [str(uuid.uuid4()) for _ in range(3)]
    try:
        for seed, prompt_id in enumerate(prompt_ids):
            body = {"prompt": api_workflow(seed=seed, steps=3, size=64), "prompt_id": prompt_id}
            assert call(f"{url}/prompt", body)[0] == 200
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    process = start_cli_server(tmp_path, port)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(finished(url, prompt_ids)) < 3:
            time.sleep(0.3)
        assert finished(url, prompt_ids) == {prompt_id: "success" for prompt_id in prompt_ids}
    finally:
        process.terminate()
        process.wait(30)
    outputs = sorted(path.name for path in (tmp_path / "out").glob("*.png"))
    assert len(outputs) >= 3
