"""lienzo's graph nodes, registered on import: ComfyUI's core nodes and lienzo's own."""

from __future__ import annotations

from lienzo.graph.nodes import (
    conditioning,
    control,
    fast_nodes,
    grid_node,
    images,
    latents,
    lienzo_nodes,
    loaders,
    sampling,
    vae,
    xray_node,
)

__all__ = [
    "conditioning",
    "control",
    "fast_nodes",
    "grid_node",
    "images",
    "latents",
    "lienzo_nodes",
    "loaders",
    "sampling",
    "vae",
    "xray_node",
]
