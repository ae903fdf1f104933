"""lienzo's own nodes, where ComfyUI has none: LienzoShapesScore scores images against a shapes-world
prompt with the world's scorer (lienzo.worlds.scorer); LienzoAttentionMap generates an image while
capturing a word's cross-attention map (lienzo.pipelines.xray, DAAM) and returns it as a MASK."""

from __future__ import annotations

import torch

from lienzo.graph.nodes.sampling import CFG, SAMPLER_ALIASES, SEED, STEPS, sampler_inputs
from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.values import images_to_pil, pil_to_images, require_exact
from lienzo.worlds.scorer import score


def describe(result) -> str:
    """One line per scored image: matched or which attributes missed."""
    if result.matched:
        return "matched"
    missed = [name for name, ok in (("background", result.background), ("count", result.count)) if not ok]
    for index, match in enumerate(result.objects):
        for name in ("colour", "shape", "size", "position"):
            if getattr(match, name) is False:
                missed.append(f"object {index + 1} {name}")
    return "missed: " + ", ".join(missed)


def shapes_score(context, images, prompt: str):
    """The fraction of images whose scene matches the prompt, and a report line per image."""
    results = [score(prompt, image) for image in images_to_pil(images)]
    fraction = sum(result.matched for result in results) / len(results)
    lines = [f"image {index + 1}: {describe(result)}" for index, result in enumerate(results)]
    ui = {
        "scores": [
            {"matched": result.matched, "report": line} for result, line in zip(results, lines, strict=True)
        ]
    }
    return {"ui": ui, "result": (fraction, "\n".join(lines))}


register(
    NodeType(
        "LienzoShapesScore",
        shapes_score,
        (
            Input("images", "IMAGE"),
            Input("prompt", "STRING", {"multiline": True, "default": "a red circle on a white background"}),
        ),
        ("FLOAT", "STRING"),
        output_names=("fraction_matched", "report"),
        category="lienzo/shapes",
        display_name="Score Shapes-World Image",
        description="Scores images against a shapes-world prompt: background, count, colour, shape, size.",
        output_node=True,
        python_module="lienzo.graph.nodes.lienzo_nodes",
    )
)


def attention_map(
    context, model, text: str, negative: str, word: str, seed: int, steps: int, cfg: float,
    sampler_name: str, scheduler: str, width: int, height: int,
):  # fmt: skip
    """txt2img with the model's own text encoders while capturing cross-attention; the image, the word's
    map as a MASK (its lowest value 0, its peak 1) and the map as a grey IMAGE."""
    require_exact(model, "LienzoAttentionMap")
    settings = {
        "seed": seed,
        "steps": steps,
        "cfg": cfg,
        "sampler": SAMPLER_ALIASES.get(sampler_name, sampler_name),
        "scheduler": scheduler,
    }
    xray = model.xray(text, negative_prompt=negative, width=width, height=height, every=steps, **settings)
    values = torch.from_numpy(xray.word_map(word).values).float()
    span = values.max() - values.min()
    mask = (values - values.min()) / span if float(span) > 0 else torch.zeros_like(values)
    return pil_to_images([xray.image]), mask[None], mask[None, :, :, None].expand(-1, -1, -1, 3).contiguous()


register(
    NodeType(
        "LienzoAttentionMap",
        attention_map,
        (
            Input("model", "MODEL"),
            Input("text", "STRING", {"multiline": True, "default": "a red circle on a white background"}),
            Input("negative", "STRING", {"multiline": True, "default": ""}),
            Input("word", "STRING", {"default": "circle"}),
            Input("seed", "INT", SEED),
            Input("steps", "INT", STEPS),
            Input("cfg", "FLOAT", CFG),
            *sampler_inputs(),
            Input("width", "INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
            Input("height", "INT", {"default": 512, "min": 16, "max": 16384, "step": 8}),
        ),
        ("IMAGE", "MASK", "IMAGE"),
        output_names=("image", "mask", "map"),
        category="lienzo/xray",
        display_name="Word Attention Map (x-ray)",
        description="Generates an image and returns where one prompt word attended, as a mask (DAAM).",
        python_module="lienzo.graph.nodes.lienzo_nodes",
    )
)
