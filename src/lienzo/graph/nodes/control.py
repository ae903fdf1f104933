"""Control-image nodes: Canny over lienzo.pipelines.preprocessors (thresholds as fractions of 255)."""

from __future__ import annotations

from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.values import images_to_pil, pil_to_images
from lienzo.pipelines.preprocessors import canny

THRESHOLD = {"min": 0.01, "max": 0.99, "step": 0.01}


def canny_node(context, image, low_threshold: float, high_threshold: float):
    """Canny edges of each image, white on black, as an IMAGE."""
    low, high = low_threshold * 255, high_threshold * 255
    return (
        pil_to_images([canny(item, low_threshold=low, high_threshold=high) for item in images_to_pil(image)]),
    )


register(
    NodeType(
        "Canny",
        canny_node,
        (
            Input("image", "IMAGE"),
            Input("low_threshold", "FLOAT", {"default": 0.4, **THRESHOLD}),
            Input("high_threshold", "FLOAT", {"default": 0.8, **THRESHOLD}),
        ),
        ("IMAGE",),
        category="image/preprocessors",
        description="Canny edges of an image (thresholds as fractions of the 0-255 gradient range).",
        python_module="comfy_extras.nodes_canny",
    )
)
