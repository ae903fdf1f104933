"""Tier 3: the fast modes in graphs on the built-in model (128 px, 6 steps): TomePatchModel and
LienzoFastModes against the Python API's FastModes, the neutral settings against the plain workflow, the
PNG record, and ComfyUI's validation errors for values out of range."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import lienzo
from lienzo.diffusion import Conditioning
from lienzo.diffusion.regions import RegionalConditioning, regional_denoiser
from lienzo.errors import InvalidArgumentError
from lienzo.graph import ExecutionHooks, Executor, GraphEnvironment, NodeExecutionError, PromptError
from lienzo.graph.values import model_view, with_fast_modes
from lienzo.io.library import BUILTIN_NAME, ModelLibrary
from lienzo.pipelines.metadata import parse_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red circle on a white background"
STEPS = 6


def workflow(*patches: tuple[str, dict], prefix: str = "fast") -> dict:
    """ComfyUI's txt2img graph with the model passed through `patches` (class, inputs) on its way to
    the KSampler."""
    prompt = {
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": STEPS, "cfg": 5.0,
              "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0, "model": ["4", 0],
              "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BUILTIN_NAME}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }  # fmt: skip
    model = ["4", 0]
    for index, (kind, inputs) in enumerate(patches):
        node = str(20 + index)
        prompt[node] = {"class_type": kind, "inputs": {**inputs, "model": model}}
        model = [node, 0]
    prompt["3"]["inputs"]["model"] = model
    return prompt


@pytest.fixture(scope="module")
def environment(tmp_path_factory) -> GraphEnvironment:
    root = tmp_path_factory.mktemp("graph_fast")
    (root / "models").mkdir()
    return GraphEnvironment(ModelLibrary(root / "models"), root / "in", root / "out", root / "tmp")


@pytest.fixture(scope="module")
def executor(environment) -> Executor:
    return Executor(environment)


@pytest.fixture(scope="module")
def run(environment, executor):
    """Run a workflow once per distinct prompt; its saved image."""
    made: dict[str, Image.Image] = {}

    def image_of(*patches) -> Image.Image:
        key = repr(patches)
        if key not in made:
            ui = executor.execute(workflow(*patches, prefix=f"run{len(made)}"), prompt_id=key)
            entry = ui["9"]["images"][0]
            made[key] = Image.open(environment.folder(entry["type"]) / entry["subfolder"] / entry["filename"])
        return made[key]

    return image_of


def python_api(**fast) -> Image.Image:
    settings = {"width": 128, "height": 128, "steps": STEPS, "cfg": 5.0, "sampler": "euler", "seed": 5}
    return lienzo.load().generate(
        PROMPT, scheduler="karras", fast=lienzo.FastModes(**fast), progress=False, **settings
    )[0]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_tome_patch_model_matches_the_python_api_and_ratio_zero_is_the_plain_image(run):
    plain = pixels(run())
    merged = run(("TomePatchModel", {"ratio": 0.5}))
    assert np.abs(pixels(merged) - pixels(python_api(tome=0.5))).max() <= 1
    # Merging barely moves the plain background (its tokens are alike) but redraws parts of the edges
    # (by up to 4 levels on shapes-v2, over 16 on shapes-v1), so look at the largest change.
    assert np.abs(pixels(merged) - plain).max() > 2
    assert np.array_equal(pixels(run(("TomePatchModel", {"ratio": 0.0}))), plain)
    assert "Token merging ratio: 0.5" in merged.info["parameters"]
    assert parse_parameters(merged.info["parameters"])["fast"] == lienzo.FastModes(tome=0.5).to_record()


def test_the_fast_modes_node_matches_the_python_api_and_chains_with_tome(run):
    plain = pixels(run())
    fast = {"deepcache_interval": 3, "cfg_cutoff": 0.5}
    image = run(("LienzoFastModes", fast))
    assert np.abs(pixels(image) - pixels(python_api(deepcache=3, cfg_cutoff=0.5))).max() <= 1
    assert np.abs(pixels(image) - plain).mean() > 0.5
    neutral = run(("LienzoFastModes", {"deepcache_interval": 1, "cfg_cutoff": 1.0}))
    assert np.array_equal(pixels(neutral), plain)
    chained = run(("TomePatchModel", {"ratio": 0.5}), ("LienzoFastModes", fast))
    all_three = lienzo.FastModes(cfg_cutoff=0.5, deepcache=3, tome=0.5)
    assert np.abs(pixels(chained) - pixels(python_api(**all_three.to_record()))).max() <= 1
    assert parse_parameters(chained.info["parameters"])["fast"] == all_three.to_record()


@pytest.mark.parametrize(
    ("kind", "inputs", "error"),
    [
        ("TomePatchModel", {"ratio": 0.95}, "value_bigger_than_max"),
        ("TomePatchModel", {"ratio": -0.1}, "value_smaller_than_min"),
        ("LienzoFastModes", {"deepcache_interval": 0, "cfg_cutoff": 1.0}, "value_smaller_than_min"),
        ("LienzoFastModes", {"deepcache_interval": 2, "cfg_cutoff": 1.5}, "value_bigger_than_max"),
    ],
)
def test_values_out_of_range_are_comfyui_validation_errors(executor, kind, inputs, error):
    with pytest.raises(PromptError) as caught:
        executor.execute(workflow((kind, inputs)), prompt_id="bad")
    entry = caught.value.payload["node_errors"]["20"]
    assert entry["class_type"] == kind and [item["type"] for item in entry["errors"]] == [error]


def test_a_new_view_keeps_the_fast_modes_and_bad_modes_are_refused():
    pipe = with_fast_modes(lienzo.load(), tome=0.5)
    assert with_fast_modes(pipe, deepcache=2).fast == lienzo.FastModes(deepcache=2, tome=0.5)
    assert model_view(pipe).fast == lienzo.FastModes(tome=0.5) and lienzo.load().fast == lienzo.FastModes()
    with pytest.raises(InvalidArgumentError, match="token merging ratio"):
        with_fast_modes(pipe, tome=0.95)


def test_the_x_ray_node_refuses_a_model_with_fast_modes(executor):
    prompt = workflow(("TomePatchModel", {"ratio": 0.5}))
    settings = {"seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "karras"}
    prompt["9"] = {"class_type": "LienzoXRay", "inputs": {"model": ["20", 0], "text": PROMPT, "negative": "",
                   **settings, "width": 64, "height": 64, "every": 2, "filename_prefix": "x"}}  # fmt: skip
    with pytest.raises(NodeExecutionError, match="take its model from before the TomePatchModel"):
        executor.execute(prompt, prompt_id="xray")


def test_deepcache_refuses_an_area_conditioning_and_the_cfg_cutoff_takes_it(executor, run):
    area = {"width": 64, "height": 64, "x": 0, "y": 0, "strength": 1.0}
    for fast, refused in (({"deepcache_interval": 2, "cfg_cutoff": 1.0}, True), ({"deepcache_interval": 1,
                          "cfg_cutoff": 0.5}, False)):  # fmt: skip
        prompt = workflow(("LienzoFastModes", fast), prefix="area")
        prompt["30"] = {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["6", 0], **area}}
        prompt["3"]["inputs"]["positive"] = ["30", 0]
        if refused:
            with pytest.raises(NodeExecutionError, match="set the DeepCache interval to 1"):
                executor.execute(prompt, prompt_id="area")
        else:
            assert executor.execute(prompt, prompt_id="area")["9"]["images"]


def test_conditioning_lists_drop_guidance_outside_the_sigma_interval():
    def constant(x, sigma, cond):
        return cond.context[:, :1, :1, None].expand_as(x).clone()

    def entry(value: float, **settings) -> RegionalConditioning:
        return RegionalConditioning(Conditioning(torch.full((1, 2, 3), value)), **settings)

    positive, negative = [entry(1.0), entry(3.0, area=(8, 8, 0, 0))], [entry(0.0)]
    x = torch.zeros(1, 4, 16, 32)
    denoise = regional_denoiser(constant, positive, negative, 2.0, sigma_interval=(1.0, math.inf))
    guided, unguided = denoise(x, torch.tensor([5.0])), denoise(x, torch.tensor([0.5]))
    assert torch.allclose(guided, 2 * regional_denoiser(constant, positive, [], 1.0)(x, torch.tensor([5.0])))
    assert torch.equal(unguided, regional_denoiser(constant, positive, [], 1.0)(x, torch.tensor([0.5])))
    assert not torch.allclose(guided, unguided)


class ThreadCounts(ExecutionHooks):
    def __init__(self):
        self.counts = []

    def progress(self, prompt_id, node_id, value, maximum):
        self.counts.append(torch.get_num_threads())


def test_the_graph_sampler_runs_small_cpu_work_on_one_thread_and_the_count_comes_back(executor):
    hooks = ThreadCounts()
    torch.set_num_threads(2)
    try:
        prompt = workflow(("TomePatchModel", {"ratio": 0.5}), prefix="threads")
        prompt["3"]["inputs"]["seed"] = 9
        executor.execute(prompt, prompt_id="threads", hooks=hooks)
        assert hooks.counts == [1] * STEPS and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
