"""Tier 3: graph workflows on the built-in model (128 px, few steps): txt2img in API and UI format against
the Python API, img2img, inpainting, a LoRA, the KSamplerAdvanced split, the scorer node, every node."""

from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import lienzo
from lienzo.graph import ExecutionHooks, ExecutionInterrupted, Executor, GraphEnvironment, load_workflow
from lienzo.graph.errors import NodeExecutionError
from lienzo.io import read_model, write_safetensors
from lienzo.io.library import BUILTIN_FOLDER, BUILTIN_NAME, ModelLibrary
from lienzo.models.controlnet import ControlNet, controlnet_config_for
from lienzo.pipelines.control_units import ControlUnit
from lienzo.training.extract_lora import lora_modules
from lienzo.worlds.shapes import Scene, SceneObject, render

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red circle on a white background"
SETTINGS = {"seed": 5, "steps": 10, "cfg": 5.0, "sampler_name": "euler", "scheduler": "karras"}


def txt2img(prompt: str = PROMPT, size: int = 128, **sampler) -> dict:
    """ComfyUI's default txt2img graph (node ids 3-9) on the built-in model."""
    return {
        "3": {"class_type": "KSampler", "inputs": {**SETTINGS, "denoise": 1.0, **sampler, "model": ["4", 0],
              "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BUILTIN_NAME}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }  # fmt: skip


def ui_node(node_id: int, kind: str, widgets: list, links: dict[str, int] | None = None) -> dict:
    """A UI-format node: its widget values and its linked inputs (name: link id)."""
    inputs = [{"name": name, "link": link} for name, link in (links or {}).items()]
    return {"id": node_id, "type": kind, "mode": 0, "widgets_values": widgets, "inputs": inputs}


UI_TXT2IMG = {
    "nodes": [
        ui_node(3, "KSampler", [5, "randomize", 10, 5.0, "euler", "karras", 1.0],
                {"model": 1, "positive": 4, "negative": 6, "latent_image": 2}),
        ui_node(4, "CheckpointLoaderSimple", [BUILTIN_NAME]),
        ui_node(5, "EmptyLatentImage", [128, 128, 1]),
        ui_node(6, "CLIPTextEncode", [PROMPT], {"clip": 3}),
        ui_node(7, "CLIPTextEncode", [""], {"clip": 5}),
        ui_node(8, "VAEDecode", [], {"samples": 7, "vae": 8}),
        ui_node(9, "SaveImage", ["ComfyUI"], {"images": 9}),
    ],
    "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
              [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"],
              [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"]],
}  # fmt: skip


def write_lora(folder, generator: torch.Generator) -> None:
    """A random rank-2 kohya LoRA over the built-in model's attention and text-encoder layers."""
    files = read_model(BUILTIN_FOLDER)
    tensors = {}
    for module in lora_modules(files, conv=False):
        network = files.unet if module.component == "unet" else files.text_encoders[module.component[1]]
        out_features, in_features = network[module.weight].shape[:2]
        tensors[f"{module.key}.lora_down.weight"] = torch.randn(2, in_features, generator=generator) * 0.3
        tensors[f"{module.key}.lora_up.weight"] = torch.randn(out_features, 2, generator=generator) * 0.3
        tensors[f"{module.key}.alpha"] = torch.tensor(2.0)
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "wobble.safetensors"))


@pytest.fixture(scope="module")
def environment(tmp_path_factory) -> GraphEnvironment:
    root = tmp_path_factory.mktemp("graph")
    write_lora(root / "models" / "loras", torch.Generator().manual_seed(0))
    (root / "in").mkdir()
    for name, factor in (("same", None), ("rescaled", 0.5)):
        folder = root / "models" / "vae" / name
        shutil.copytree(BUILTIN_FOLDER / "vae", folder)
        config = json.loads((folder / "config.json").read_text())
        config["scaling_factor"] = factor or config["scaling_factor"]
        (folder / "config.json").write_text(json.dumps(config))
    scene = Scene("white", (SceneObject("red", "circle", "large", "center"),))
    source = render(scene)
    source.save(root / "in" / "circle.png")
    rgba = source.convert("RGBA")
    alpha = np.full((128, 128), 255, dtype=np.uint8)
    alpha[40:88, 40:88] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(root / "in" / "circle_masked.png")
    return GraphEnvironment(ModelLibrary(root / "models"), root / "in", root / "out", root / "tmp")


@pytest.fixture(scope="module")
def executor(environment) -> Executor:
    return Executor(environment)


def saved_image(environment, ui: dict) -> Image.Image:
    entry = ui["images"][0]
    return Image.open(environment.folder(entry["type"]) / entry["subfolder"] / entry["filename"])


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


class Recorder(ExecutionHooks):
    def __init__(self):
        self.progress_values, self.previews, self.cached = [], [], []

    def progress(self, prompt_id, node_id, value, maximum):
        self.progress_values.append((node_id, value, maximum))

    def preview(self, prompt_id, node_id, image):
        self.previews.append(image)

    def execution_cached(self, prompt_id, node_ids):
        self.cached = list(node_ids)


def test_txt2img_matches_the_python_api_and_saves_comfyui_and_a1111_metadata(environment, executor):
    hooks = Recorder()
    ui = executor.execute(txt2img(), prompt_id="t2i", hooks=hooks, extra_pnginfo={"workflow": UI_TXT2IMG})
    image = saved_image(environment, ui["9"])
    assert ui["9"]["images"][0]["filename"] == "ComfyUI_00001_.png"
    path = environment.output_dir / "ComfyUI_00001_.png"
    assert os.stat(path).st_mode & 0o777 == 0o644
    settings = {"steps": SETTINGS["steps"], "cfg": 5.0, "sampler": "euler", "scheduler": "karras", "seed": 5}
    reference = lienzo.load().generate(PROMPT, width=128, height=128, progress=False, **settings)[0]
    assert np.abs(pixels(image) - pixels(reference)).max() <= 1
    assert json.loads(image.info["prompt"]) == txt2img()
    assert load_workflow(path) == txt2img()
    assert json.loads(image.info["workflow"]) == UI_TXT2IMG
    assert image.info["parameters"].startswith(PROMPT + "\nSteps: 10, Sampler: Euler, Schedule type: Karras")
    assert f"Seed: 5, Size: 128x128, Model: {BUILTIN_NAME}" in image.info["parameters"]
    assert [value for _, value, _ in hooks.progress_values] == list(range(1, SETTINGS["steps"] + 1))
    assert len(hooks.previews) == SETTINGS["steps"] and hooks.previews[0].size == (16, 16)


def test_the_ui_format_gives_the_same_prompt_so_every_node_is_cached(environment, executor, tmp_path):
    path = tmp_path / "workflow.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=png_with_workflow())
    executor.execute(txt2img(), prompt_id="api")
    hooks = Recorder()
    ui = executor.execute(load_workflow(path), prompt_id="ui", hooks=hooks)
    assert sorted(hooks.cached) == ["3", "4", "5", "6", "7", "8", "9"]
    assert ui["9"]["images"][0]["filename"] == "ComfyUI_00001_.png"


def png_with_workflow():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("workflow", json.dumps(UI_TXT2IMG))
    return info


def test_the_scorer_node_accepts_a_generated_image_and_rejects_a_wrong_prompt(executor):
    prompt = txt2img()
    prompt["10"] = {"class_type": "LienzoShapesScore", "inputs": {"images": ["8", 0], "prompt": PROMPT}}
    wrong = "a blue square on a yellow background"
    prompt["11"] = {"class_type": "LienzoShapesScore", "inputs": {"images": ["8", 0], "prompt": wrong}}
    ui = executor.execute(prompt, prompt_id="score")
    assert ui["10"]["scores"] == [{"matched": True, "report": "image 1: matched"}]
    assert ui["11"]["scores"][0]["matched"] is False and "background" in ui["11"]["scores"][0]["report"]


def img2img(denoise: float, image: str = "circle.png") -> dict:
    prompt = txt2img("a blue circle on a white background", denoise=denoise)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    prompt["5"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    return prompt


def test_img2img_keeps_the_layout_and_follows_the_prompt(environment, executor):
    source = pixels(Image.open(environment.input_dir / "circle.png"))
    light = pixels(saved_image(environment, executor.execute(img2img(0.3), prompt_id="i1")["9"]))
    strong = pixels(saved_image(environment, executor.execute(img2img(0.8), prompt_id="i2")["9"]))
    assert np.abs(light - source).mean() < np.abs(strong - source).mean()
    centre = (slice(48, 80), slice(48, 80))
    assert strong[centre][..., 2].mean() > strong[centre][..., 0].mean()
    assert source[centre][..., 0].mean() > source[centre][..., 2].mean()


def test_inpainting_with_a_noise_mask_repaints_only_the_masked_centre(environment, executor):
    prompt = img2img(1.0, "circle_masked.png")
    prompt["11"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["5", 0], "mask": ["10", 1]}}
    prompt["3"]["inputs"]["latent_image"] = ["11", 0]
    prompt["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}}
    prompt["13"] = {"class_type": "PreviewImage", "inputs": {"images": ["12", 0]}}
    ui = executor.execute(prompt, prompt_id="inpaint")
    result, roundtrip = pixels(saved_image(environment, ui["9"])), pixels(saved_image(environment, ui["13"]))
    assert ui["13"]["images"][0]["type"] == "temp"
    difference = np.abs(result - roundtrip).mean(axis=2)
    corners = np.concatenate(
        [difference[:24, :24], difference[:24, -24:], difference[-24:, :24], difference[-24:, -24:]]
    )
    assert corners.mean() < 2
    assert roundtrip[52:76, 52:76, 0].mean() > roundtrip[52:76, 52:76, 2].mean() + 50
    assert difference[52:76, 52:76].mean() > 20 * corners.mean()


def test_a_lora_workflow_matches_the_python_api_with_the_same_lora(environment, executor):
    prompt = txt2img()
    lora = {"lora_name": "wobble.safetensors", "strength_model": 1.0, "strength_clip": 1.0}
    prompt["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], **lora}}
    prompt["3"]["inputs"]["model"] = ["10", 0]
    for node in ("6", "7"):
        prompt[node]["inputs"]["clip"] = ["10", 1]
    image = pixels(saved_image(environment, executor.execute(prompt, prompt_id="lora")["9"]))
    plain = pixels(Image.open(environment.output_dir / "ComfyUI_00001_.png"))
    pipe = lienzo.load()
    pipe.library = environment.library
    pipe.loras.add("wobble", 1.0)
    reference = pipe.generate(PROMPT, width=128, height=128, steps=SETTINGS["steps"], cfg=5.0,
                              sampler="euler", scheduler="karras", seed=5, progress=False)[0]  # fmt: skip
    assert np.abs(image - pixels(reference)).max() <= 1
    assert np.abs(image - plain).mean() > 1


def test_ksampler_advanced_split_in_two_equals_one_ksampler(executor):
    prompt = txt2img(size=64)
    advanced = {"model": ["4", 0], "noise_seed": 5, "steps": SETTINGS["steps"], "cfg": 5.0,
                "sampler_name": "euler", "scheduler": "karras", "positive": ["6", 0],
                "negative": ["7", 0]}  # fmt: skip
    prompt["20"] = {"class_type": "KSamplerAdvanced", "inputs": {**advanced, "add_noise": "enable",
                    "latent_image": ["5", 0], "start_at_step": 0, "end_at_step": 2,
                    "return_with_leftover_noise": "enable"}}  # fmt: skip
    prompt["21"] = {"class_type": "KSamplerAdvanced", "inputs": {**advanced, "add_noise": "disable",
                    "latent_image": ["20", 0], "start_at_step": 2, "end_at_step": 10000,
                    "return_with_leftover_noise": "disable"}}  # fmt: skip
    prompt["22"] = {"class_type": "VAEDecode", "inputs": {"samples": ["21", 0], "vae": ["4", 2]}}
    prompt["23"] = {"class_type": "PreviewImage", "inputs": {"images": ["22", 0]}}
    ui = executor.execute(prompt, prompt_id="split")
    env = executor.environment
    assert np.abs(pixels(saved_image(env, ui["9"])) - pixels(saved_image(env, ui["23"]))).max() <= 1


def test_interrupting_stops_the_sampler_between_steps(executor):
    interrupt = threading.Event()

    class StopAtStep2(ExecutionHooks):
        def progress(self, prompt_id, node_id, value, maximum):
            if value == 2:
                interrupt.set()

    with pytest.raises(ExecutionInterrupted) as caught:
        executor.execute(
            txt2img(size=64, seed=99), prompt_id="stop", hooks=StopAtStep2(), interrupt=interrupt
        )
    assert caught.value.node_id == "3"


def test_every_other_core_node_runs_in_one_workflow(environment, executor):
    def node(kind: str, **inputs) -> dict:
        return {"class_type": kind, "inputs": inputs}

    prompt = txt2img(size=64, steps=2)
    prompt.update({
        "30": node("CLIPSetLastLayer", clip=["4", 1], stop_at_clip_layer=-2),
        "31": node("CLIPTextEncode", text="on a white background", clip=["30", 0]),
        "32": node("ConditioningConcat", conditioning_to=["6", 0], conditioning_from=["31", 0]),
        "33": node("ConditioningSetArea", conditioning=["32", 0], width=64, height=64, x=0, y=0,
                   strength=1.5),
        "34": node("ConditioningCombine", conditioning_1=["32", 0], conditioning_2=["33", 0]),
        "35": node("ConditioningSetTimestepRange", conditioning=["34", 0], start=0.0, end=0.5),
        "36": node("ConditioningCombine", conditioning_1=["35", 0], conditioning_2=["6", 0]),
        "40": node("LoadImage", image="circle.png"),
        "41": node("ImageScale", image=["40", 0], upscale_method="bilinear", width=64, height=0,
                   crop="disabled"),
        "42": node("ImagePadForOutpaint", image=["41", 0], left=8, top=0, right=8, bottom=0, feathering=4),
        "43": node("LoadImageMask", image="circle_masked.png", channel="alpha"),
        "44": node("InpaintModelConditioning", positive=["36", 0], negative=["7", 0], vae=["4", 2],
                   pixels=["42", 0], mask=["42", 1], noise_mask=True),
        "45": node("LoraLoaderModelOnly", model=["4", 0], lora_name="wobble", strength_model=0.5),
        "46": node("LatentUpscaleBy", samples=["3", 0], upscale_method="nearest-exact", scale_by=1.5),
        "47": node("LatentUpscale", samples=["46", 0], upscale_method="bilinear", width=64, height=64,
                   crop="center"),
        "48": node("VAEDecodeTiled", samples=["47", 0], vae=["4", 2], tile_size=64, overlap=32,
                   temporal_size=64, temporal_overlap=8),
        "49": node("ImageScaleBy", image=["48", 0], upscale_method="lanczos", scale_by=0.5),
        "50": node("VAEEncodeTiled", pixels=["49", 0], vae=["4", 2], tile_size=64, overlap=0,
                   temporal_size=64, temporal_overlap=8),
        "51": node("VAEEncodeForInpaint", pixels=["41", 0], vae=["4", 2], mask=["43", 0], grow_mask_by=6),
        "52": node("VAEDecode", samples=["51", 0], vae=["4", 2]),
        "53": node("Canny", image=["41", 0], low_threshold=0.2, high_threshold=0.5),
        "54": node("VAEDecode", samples=["50", 0], vae=["4", 2]),
    })  # fmt: skip
    prompt["3"]["inputs"].update(
        model=["45", 0], positive=["44", 0], negative=["44", 1], latent_image=["44", 2]
    )
    for index, source in enumerate(("48", "49", "52", "53", "54")):
        prompt[f"6{index}"] = node("PreviewImage", images=[source, 0])
    ui = executor.execute(prompt, prompt_id="all")
    sizes = {key: saved_image(environment, ui[key]).size for key in ("9", "60", "61", "62", "63", "64")}
    assert sizes == {
        "9": (80, 64),
        "60": (64, 64),
        "61": (32, 32),
        "62": (64, 64),
        "63": (64, 64),
        "64": (32, 32),
    }
    edges = pixels(saved_image(environment, ui["63"]))
    assert set(np.unique(edges)) == {0, 255}


def write_controlnet(path, seed: int) -> None:
    """A ControlNet for the built-in model with every weight random (zero convolutions included)."""
    spec = lienzo.load().spec
    model = ControlNet(controlnet_config_for(spec.unet, spec.vae.downscale_factor))
    generator = torch.Generator().manual_seed(seed)
    state = {
        key: torch.randn(value.shape, generator=generator) * 0.05 for key, value in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, {f"control_model.{key}": value for key, value in state.items()})


def test_controlnet_workflows_match_the_python_api_with_the_same_unit(environment, executor):
    path = environment.library.root / "controlnet" / "edges.safetensors"
    write_controlnet(path, 0)
    control = render(Scene("white", (SceneObject("blue", "square", "large", "center"),))).resize((64, 64))
    control.save(environment.input_dir / "control.png")
    prompt = txt2img(size=64, steps=2)
    prompt["40"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "edges"}}
    prompt["41"] = {"class_type": "LoadImage", "inputs": {"image": "control.png"}}
    unit = {
        "control_net": ["40", 0],
        "image": ["41", 0],
        "strength": 0.8,
        "start_percent": 0.0,
        "end_percent": 1.0,
    }
    prompt["42"] = {
        "class_type": "ControlNetApplyAdvanced",
        "inputs": {"positive": ["6", 0], "negative": ["7", 0], **unit},
    }
    prompt["3"]["inputs"].update(positive=["42", 0], negative=["42", 1])
    image = pixels(saved_image(environment, executor.execute(prompt, prompt_id="control")["9"]))
    pipe = lienzo.load()
    units = [ControlUnit(pipe.load_controlnet(path), control, 0.8)]
    settings = {
        "steps": 2,
        "cfg": 5.0,
        "sampler": "euler",
        "scheduler": "karras",
        "seed": 5,
        "progress": False,
    }
    reference = pipe.generate(PROMPT, width=64, height=64, controlnets=units, **settings)[0]
    assert np.abs(image - pixels(reference)).max() <= 1
    plain = pixels(
        saved_image(environment, executor.execute(txt2img(size=64, steps=2), prompt_id="plain")["9"])
    )
    assert np.abs(image - plain).mean() > 1


def test_a_loaded_vae_reads_latents_at_its_own_scaling_factor(environment, executor):
    prompt = img2img(0.5)
    for node, name in (("30", "same"), ("31", "rescaled")):
        prompt[node] = {"class_type": "VAELoader", "inputs": {"vae_name": name}}
    prompt["5"]["inputs"]["vae"] = ["31", 0]
    prompt["8"]["inputs"]["vae"] = ["30", 0]
    prompt["32"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["31", 0]}}
    prompt["33"] = {"class_type": "PreviewImage", "inputs": {"images": ["32", 0]}}
    ui = executor.execute(prompt, prompt_id="vae")
    reference = executor.execute(img2img(0.5), prompt_id="vae-reference")
    images = [
        pixels(saved_image(environment, outputs[node]))
        for outputs, node in ((ui, "9"), (ui, "33"), (reference, "9"))
    ]
    assert np.abs(images[0] - images[1]).max() <= 1
    assert np.abs(images[0] - images[2]).max() <= 1


def test_an_empty_latent_takes_the_models_channels_and_another_models_latent_is_refused(executor):
    assert read_model(BUILTIN_FOLDER).spec.vae.embed_dim == 16  # EmptyLatentImage makes 4 channels
    prompt = txt2img()
    prompt["40"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "shapes-v1"}}
    prompt["41"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["40", 2]}}
    prompt["42"] = {"class_type": "VAEDecode", "inputs": {"samples": ["41", 0], "vae": ["4", 2]}}
    prompt["43"] = {"class_type": "PreviewImage", "inputs": {"images": ["42", 0]}}
    with pytest.raises(NodeExecutionError, match="latent has 4 channels but the model's latents have 16"):
        executor.execute(prompt, prompt_id="widths")


def test_the_attention_map_node_masks_where_the_word_attended(environment, executor):
    text = "a large red circle on the left on a white background"
    settings = {"seed": 3, "steps": 5, "cfg": 5.0, "sampler_name": "euler", "scheduler": "karras"}
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": BUILTIN_NAME}},
        "20": {"class_type": "LienzoAttentionMap", "inputs": {"model": ["4", 0], "text": text, "negative": "",
               "word": "circle", "width": 128, "height": 128, **settings}},
        "21": {"class_type": "PreviewImage", "inputs": {"images": ["20", 0]}},
        "22": {"class_type": "PreviewImage", "inputs": {"images": ["20", 2]}},
    }  # fmt: skip
    ui = executor.execute(prompt, prompt_id="xray")
    image = pixels(saved_image(environment, ui["21"]))
    attention = pixels(saved_image(environment, ui["22"]))[..., 0]
    red = (image[..., 0] > 150) & (image[..., 1] < 100) & (image[..., 2] < 100)
    assert red.sum() > 200 and attention.max() == 255
    assert attention[red].mean() > 2 * attention[~red].mean()
