"""lienzo's own nodes, where ComfyUI has none: LienzoShapesScore scores images against a shapes-world
prompt with the world's scorer (lienzo.worlds.scorer)."""

from __future__ import annotations

from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.values import images_to_pil
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
