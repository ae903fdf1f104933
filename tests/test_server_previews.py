"""Sampler previews by ComfyUI's preview methods: TAESD's decoder from the models folder's vae_approx/
over a real websocket (a tiny SD 1.x checkpoint), latent2rgb, auto and none in the graph engine, the
built-in model kept on latent2rgb, and the server's checks."""

from __future__ import annotations

import io
import shutil
import struct
import uuid

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lienzo.errors import InvalidArgumentError
from lienzo.graph import ExecutionHooks, Executor, GraphEnvironment
from lienzo.io.library import ModelLibrary
from lienzo.models.taesd import TinyDecoder
from server_client import api_workflow, run_over_websocket, serve, server_config
from tiny_models import tiny_pipeline_folder

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 3
SIZE = 64
LATENT = SIZE // 8
"""EmptyLatentImage's latent side (1/8 of the image's, as in ComfyUI, for any model)."""
TAESD = 8 * LATENT
"""TAESD's previews: 8 pixels per latent cell."""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder with a tiny SD 1.x checkpoint and, in vae_approx/, a TAESD decoder with seeded
    random weights."""
    root = tmp_path_factory.mktemp("previews") / "models"
    shutil.copytree(tiny_pipeline_folder("sd1"), root / "checkpoints" / "tiny-sd1")
    (root / "vae_approx").mkdir(parents=True)
    torch.manual_seed(0)
    save_file(TinyDecoder().state_dict(), str(root / "vae_approx" / "taesd_decoder.safetensors"))
    return root


def workflow(checkpoint: str = "tiny-sd1") -> dict:
    prompt = api_workflow(steps=STEPS, size=SIZE)
    prompt["4"]["inputs"]["ckpt_name"] = checkpoint
    return prompt


class Previews(ExecutionHooks):
    def __init__(self):
        self.images = []

    def preview(self, prompt_id, node_id, image):
        self.images.append(image)


def preview_sizes(root, method: str, tmp_path, checkpoint: str = "tiny-sd1") -> list[tuple[int, int]]:
    environment = GraphEnvironment(ModelLibrary(root), tmp_path, tmp_path / "out", tmp_path / "tmp", method)
    hooks = Previews()
    Executor(environment).execute(workflow(checkpoint), prompt_id=method, hooks=hooks)
    return [image.size for image in hooks.images]


def test_the_websocket_sends_taesd_previews_at_image_size(models, tmp_path):
    server = serve(tmp_path, library=ModelLibrary(root=models), preview_method="taesd")
    try:
        body = {"prompt": workflow(), "prompt_id": str(uuid.uuid4())}
        _, _, frames = run_over_websocket(server.url, body)
    finally:
        server.stop()
    assert len(frames) == STEPS and all(struct.unpack(">II", frame[:8]) == (1, 1) for frame in frames)
    assert {Image.open(io.BytesIO(frame[8:])).size for frame in frames} == {(TAESD, TAESD)}


def test_each_method_draws_its_previews_and_the_builtin_model_keeps_latent2rgb(models, tmp_path):
    assert preview_sizes(models, "auto", tmp_path) == [(TAESD, TAESD)] * STEPS
    assert preview_sizes(models, "latent2rgb", tmp_path) == [(LATENT, LATENT)] * STEPS
    assert preview_sizes(models, "none", tmp_path) == []
    builtin = preview_sizes(models, "taesd", tmp_path, "shapes-v1")
    assert builtin == [(LATENT, LATENT)] * STEPS
    (models.parent / "bare" / "checkpoints").mkdir(parents=True)
    shutil.copytree(models / "checkpoints" / "tiny-sd1", models.parent / "bare" / "checkpoints" / "tiny-sd1")
    assert preview_sizes(models.parent / "bare", "auto", tmp_path) == [(LATENT, LATENT)] * STEPS


def test_taesd_without_its_file_and_unknown_methods_are_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match="taesd_decoder.safetensors"):
        server_config(tmp_path, preview_method="taesd")
    with pytest.raises(InvalidArgumentError, match="unknown preview method 'fast'"):
        server_config(tmp_path, preview_method="fast")
