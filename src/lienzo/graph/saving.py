"""Saving graph images as ComfyUI does: `{prefix}_{counter:05}_.png` in the output folder (the prefix may
name a sub-folder), with the `prompt` and `workflow` PNG chunks and A1111's `parameters`, read from the
KSampler and prompts upstream of the saving node."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lienzo.errors import InvalidArgumentError
from lienzo.graph.environment import resolve_inside, safe_relative
from lienzo.graph.validation import is_link
from lienzo.io.atomic import atomic_path
from lienzo.pipelines.fast_modes import FastModes
from lienzo.pipelines.metadata import PARAMETERS_KEY, format_parameters
from lienzo.pipelines.output import create_exclusively, release_paths

SAMPLERS = ("KSampler", "KSamplerAdvanced")
FAST_MODE_INPUTS = {
    "TomePatchModel": {"ratio": "tome"},
    "LienzoFastModes": {"deepcache_interval": "deepcache", "cfg_cutoff": "cfg_cutoff"},
}
"""The fast-mode nodes' inputs as FastModes fields (lienzo.graph.nodes.fast_nodes)."""
MODEL_INPUTS = ("model", "clip")
COMPRESS_LEVEL = 4


def literal(prompt: dict, node_id: str, name: str):
    """A node's input when it is a literal value, else None."""
    value = prompt[node_id].get("inputs", {}).get(name)
    return None if is_link(value) else value


def upstream_node(
    prompt: dict, start: str, classes: tuple[str, ...], through: tuple[str, ...] | None = None
) -> str | None:
    """The nearest node of one of `classes` upstream of `start` (breadth first), following only the inputs
    named in `through` when given."""
    queue, seen = [start], {start}
    while queue:
        node_id = queue.pop(0)
        for name, value in prompt[node_id].get("inputs", {}).items():
            if not is_link(value) or (through is not None and name not in through):
                continue
            source = str(value[0])
            if source in seen or source not in prompt:
                continue
            if prompt[source]["class_type"] in classes:
                return source
            seen.add(source)
            queue.append(source)
    return None


def prompt_text(prompt: dict, sampler: str, name: str) -> str | None:
    """The text of the CLIPTextEncode feeding a sampler's positive or negative input."""
    value = prompt[sampler]["inputs"].get(name)
    if not is_link(value):
        return None
    source = str(value[0])
    if prompt.get(source, {}).get("class_type") != "CLIPTextEncode":
        source = upstream_node(prompt, source, ("CLIPTextEncode",))
    text = None if source is None else literal(prompt, source, "text")
    return text if isinstance(text, str) else None


def fast_record(prompt: dict, sampler: str) -> dict:
    """The fast modes the sampler's model carries: along the chain of `model` inputs upstream, each
    mode from the nearest node that sets it (neutral where none does)."""
    fast = dict(FastModes().to_record())
    found: set[str] = set()
    node_id, seen = sampler, {sampler}
    while True:
        value = prompt[node_id].get("inputs", {}).get("model")
        if not is_link(value) or str(value[0]) not in prompt or str(value[0]) in seen:
            return fast
        node_id = str(value[0])
        seen.add(node_id)
        for name, mode in FAST_MODE_INPUTS.get(prompt[node_id]["class_type"], {}).items():
            setting = literal(prompt, node_id, name)
            if mode not in found and setting is not None:
                fast[mode] = setting
            found.add(mode)


def a1111_record(prompt: dict, node_id: str, image: Image.Image, index: int) -> dict | None:
    """The generation record A1111's `parameters` describe, for batch item `index` of the images a node
    saves: the nearest sampler upstream, its prompts and checkpoint; None without a sampler."""
    sampler = upstream_node(prompt, node_id, SAMPLERS)
    if sampler is None:
        return None
    advanced = prompt[sampler]["class_type"] == "KSamplerAdvanced"
    seed = literal(prompt, sampler, "noise_seed" if advanced else "seed")
    checkpoint = upstream_node(prompt, sampler, ("CheckpointLoaderSimple",), ("model", *MODEL_INPUTS))
    model = None if checkpoint is None else literal(prompt, checkpoint, "ckpt_name")
    strength = 1.0 if advanced else literal(prompt, sampler, "denoise")
    return {
        "mode": "txt2img" if strength in (None, 1, 1.0) else "img2img",
        "prompt": prompt_text(prompt, sampler, "positive") or "",
        "negative_prompt": prompt_text(prompt, sampler, "negative") or "",
        "steps": literal(prompt, sampler, "steps"),
        "sampler": literal(prompt, sampler, "sampler_name"),
        "scheduler": literal(prompt, sampler, "scheduler"),
        "cfg": literal(prompt, sampler, "cfg"),
        "seed": seed + index if isinstance(seed, int) else None,
        "width": image.width,
        "height": image.height,
        "strength": strength,
        "model": Path(model).stem if isinstance(model, str) else None,
        "fast": fast_record(prompt, sampler),
    }


def png_info(prompt: dict | None, extra_pnginfo: dict, parameters: dict | None) -> PngInfo:
    """ComfyUI's `prompt` chunk and one chunk per extra_pnginfo key (`workflow`), and A1111's `parameters`."""
    info = PngInfo()
    if parameters is not None:
        info.add_text(PARAMETERS_KEY, format_parameters(parameters))
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in extra_pnginfo.items():
        info.add_text(str(key), json.dumps(value))
    return info


def save_path(folder: Path, prefix: str) -> tuple[Path, str, str]:
    """(folder to write in, sub-folder name, file name stem) of a filename prefix such as "run/img"."""
    relative = safe_relative(prefix, "filename_prefix")
    subfolder = relative.parent.as_posix() if relative.parent.as_posix() != "." else ""
    target = (
        resolve_inside(folder, relative.parent.as_posix(), "filename_prefix") if subfolder else Path(folder)
    )
    return target, subfolder, relative.name


def next_counter(folder: Path, stem: str) -> int:
    """One more than the highest counter of `{stem}_{counter}_.png` files in the folder (1 for none)."""
    pattern = re.compile(rf"^{re.escape(stem)}_(\d+)_\.png$")
    counters = [int(match.group(1)) for path in folder.glob("*.png") if (match := pattern.match(path.name))]
    return max(counters, default=0) + 1


def save_images(
    images: list[Image.Image], folder: Path, prefix: str, kind: str, infos: list[PngInfo], level: int
) -> list[dict]:
    """Write the images as `{prefix}_{counter:05}_.png` (each name reserved exclusively, then written
    atomically with mode 0644); their UI entries {"filename", "subfolder", "type"}."""
    if not prefix.strip():
        raise InvalidArgumentError("filename_prefix is empty; give a name such as ComfyUI")
    target, subfolder, stem = save_path(folder, prefix)
    target.mkdir(parents=True, exist_ok=True)
    results = []
    counter = next_counter(target, stem)
    for image, info in zip(images, infos, strict=True):
        while not create_exclusively(target / f"{stem}_{counter:05}_.png"):
            counter += 1
        path = target / f"{stem}_{counter:05}_.png"
        try:
            with atomic_path(path) as temporary:
                image.save(temporary, format="PNG", pnginfo=info, compress_level=level)
        except BaseException:
            release_paths([path])
            raise
        results.append({"filename": path.name, "subfolder": subfolder, "type": kind})
        counter += 1
    return results
