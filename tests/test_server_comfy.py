"""The ComfyUI API over real HTTP and websockets: a script client gets progress, previews, history and an
image the shapes scorer accepts; bad workflows get ComfyUI's error JSON; prompt ids are idempotent."""

from __future__ import annotations

import io
import json
import struct
import uuid

import pytest
from PIL import Image

from lienzo.worlds.scorer import score
from server_client import PROMPT, api_workflow, call, run_over_websocket, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    handle = serve(tmp_path_factory.mktemp("comfy"))
    yield handle
    handle.stop()


def test_a_websocket_client_gets_progress_previews_history_and_the_image(server):
    workflow = {"nodes": [], "links": [], "version": 0.4}
    body = {
        "prompt": api_workflow(),
        "prompt_id": str(uuid.uuid4()),
        "extra_data": {"extra_pnginfo": {"workflow": workflow}},
    }
    queued, messages, frames = run_over_websocket(server.url, body)
    kinds = [message["type"] for message in messages]
    for kind in (
        "status",
        "execution_start",
        "execution_cached",
        "executing",
        "progress",
        "executed",
        "execution_success",
    ):
        assert kind in kinds
    assert kinds.index("execution_start") < kinds.index("progress") < kinds.index("execution_success")
    steps = [m["data"] for m in messages if m["type"] == "progress"]
    assert steps[-1]["value"] == steps[-1]["max"] == 10 and steps[-1]["node"] == "3"
    assert frames and struct.unpack(">II", frames[0][:8]) == (1, 1)
    assert Image.open(io.BytesIO(frames[0][8:])).format == "JPEG"

    status, history = call(f"{server.url}/history/{queued['prompt_id']}")
    entry = history[queued["prompt_id"]]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"]
    (image_ref,) = entry["outputs"]["9"]["images"]
    query = "&".join(f"{key}={value}" for key, value in image_ref.items())
    status, data = call(f"{server.url}/view?{query}")
    assert status == 200
    image = Image.open(io.BytesIO(data))
    assert score(PROMPT, image.convert("RGB")).matched
    assert json.loads(image.info["prompt"])["6"]["inputs"]["text"] == PROMPT
    assert json.loads(image.info["workflow"]) == workflow
    assert "Steps: 10" in image.info["parameters"]
    saved = server.context.config.output_dir / image_ref["subfolder"] / image_ref["filename"]
    assert saved.stat().st_mode & 0o777 == 0o644


def test_the_same_prompt_id_is_queued_once(server):
    prompt_id = str(uuid.uuid4())
    body = {"prompt": api_workflow(steps=1, size=64), "prompt_id": prompt_id, "front": True}
    first = call(f"{server.url}/api/prompt", body)
    second = call(f"{server.url}/prompt", body)
    assert first[0] == second[0] == 200 and first[1] == second[1]
    assert first[1]["prompt_id"] == prompt_id
    jobs = [job for job in server.context.store.jobs() if job.id == prompt_id]
    assert len(jobs) == 1


def cycle_workflow() -> dict:
    workflow = api_workflow()
    workflow["3"]["inputs"]["latent_image"] = ["8", 0]
    workflow["8"]["inputs"]["samples"] = ["3", 0]
    return workflow


def bad_type_workflow() -> dict:
    workflow = api_workflow()
    workflow["8"]["inputs"]["samples"] = ["6", 0]
    return workflow


def unknown_node_workflow() -> dict:
    workflow = api_workflow()
    workflow["5"]["class_type"] = "NoSuchNode"
    return workflow


@pytest.mark.parametrize(
    "workflow",
    [cycle_workflow(), bad_type_workflow(), unknown_node_workflow()],
    ids=["cycle", "bad_type", "unknown_node"],
)
def test_invalid_workflows_get_comfyuis_error_json_and_the_server_stays_up(server, workflow):
    status, answer = call(f"{server.url}/prompt", {"prompt": workflow})
    assert status == 400
    assert set(answer) == {"error", "node_errors"}
    assert {"type", "message", "details", "extra_info"} <= set(answer["error"])
    assert call(f"{server.url}/queue")[0] == 200


def test_no_prompt_and_bad_json_are_refused(server):
    status, answer = call(f"{server.url}/prompt", {"client_id": "x"})
    assert status == 400 and answer["error"]["type"] == "no_prompt"
    status, _ = call(f"{server.url}/prompt", data=b"{not json")
    assert status == 400


def test_object_info_lists_the_builtin_model_and_the_core_nodes(server):
    status, info = call(f"{server.url}/api/object_info")
    assert status == 200
    choices = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert any("shapes" in name for name in choices)
    for node in ("KSampler", "SaveImage", "VAEDecode", "CLIPTextEncode", "EmptyLatentImage"):
        assert info[node]["name"] == node
    assert call(f"{server.url}/object_info/KSampler")[1].keys() == {"KSampler"}
    assert call(f"{server.url}/object_info/Nope")[1] == {}
