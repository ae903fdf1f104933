"""LienzoXRay: the pipeline x-ray (lienzo.pipelines.xray, Pipeline.xray) as a graph node. One txt2img run's
tokens, schedule, trajectory and per-word cross-attention maps are written as an x-ray folder under the
output folder's `xray/`, and listed in the node's UI output for the page's X-ray mode."""

from __future__ import annotations

from pathlib import Path

from lienzo.graph.nodes.sampling import CFG, SEED, STEPS, generation_settings, sampler_inputs, step_callback
from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.saving import save_path
from lienzo.graph.values import pil_to_images, require_exact
from lienzo.pipelines.xray.files import ATTENTION_FOLDER, word_file_name

XRAY_FOLDER = "xray"
PIXELS = {"default": 512, "min": 64, "max": 4096, "step": 8}


def reserve_folder(output_dir: Path, kind: str, prefix: str) -> tuple[Path, str]:
    """A new folder `{kind}/{prefix}_{counter:05}` in the output folder (made exclusively) and its
    sub-folder name for /view."""
    target, subfolder, stem = save_path(output_dir, f"{kind}/{prefix}")
    target.mkdir(parents=True, exist_ok=True)
    counter = len(list(target.glob(f"{stem}_*"))) + 1
    while True:
        folder = target / f"{stem}_{counter:05}"
        try:
            folder.mkdir()
        except FileExistsError:
            counter += 1
            continue
        return folder, f"{subfolder}/{folder.name}"


def xray(
    context,
    model,
    text: str,
    negative: str,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    width: int,
    height: int,
    every: int,
    filename_prefix: str,
):
    """X-ray one txt2img run of the model (its LoRAs applied) and save the x-ray folder; progress, previews
    and interruption between steps as KSampler has them."""
    require_exact(model, "LienzoXRay")
    result = model.xray(
        text,
        every=every,
        callback=step_callback(context, model),
        **generation_settings(negative, seed, steps, cfg, sampler_name, scheduler, width, height),
    )
    folder, subfolder = reserve_folder(context.environment.output_dir, XRAY_FOLDER, filename_prefix)
    result.save(folder)
    maps_folder = f"{subfolder}/{ATTENTION_FOLDER}"
    entry = {
        "subfolder": subfolder,
        "type": "output",
        "image": "image.png",
        "sigmas": "sigmas.png",
        "trajectory": "trajectory.png" if result.trajectory else None,
        "index": "index.html",
        "prompt": text,
        "maps": [
            {
                "word": item.word.text,
                "index": item.word.index,
                "filename": word_file_name(item.word.index, item.word.text),
                "subfolder": maps_folder,
                "type": "output",
            }
            for item in result.maps
        ],
        "tokens": result.tokens.to_json(),
        "schedule": result.schedule.to_json(),
    }
    return {"ui": {"xray": [entry]}, "result": (pil_to_images([result.image]),)}


register(
    NodeType(
        "LienzoXRay",
        xray,
        (
            Input("model", "MODEL"),
            Input("text", "STRING", {"multiline": True, "default": "a red circle on a white background"}),
            Input("negative", "STRING", {"multiline": True, "default": ""}),
            Input("seed", "INT", SEED),
            Input("steps", "INT", STEPS),
            Input("cfg", "FLOAT", CFG),
            *sampler_inputs(),
            Input("width", "INT", PIXELS),
            Input("height", "INT", PIXELS),
            Input("every", "INT", {"default": 5, "min": 1, "max": 1000}),
            Input("filename_prefix", "STRING", {"default": "lienzo"}),
        ),
        ("IMAGE",),
        category="lienzo/xray",
        display_name="Pipeline X-ray",
        description="Generates one image while watching: tokens, schedule, trajectory, per-word maps.",
        output_node=True,
        python_module="lienzo.graph.nodes.xray_node",
    )
)
