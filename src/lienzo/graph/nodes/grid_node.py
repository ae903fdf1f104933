"""LienzoGrid: parameter grids (A1111's X/Y/Z plot, lienzo.pipelines.grid.plot_grid) as a graph node. The
grid PNGs and every cell's image (with its parameters) are written under the output folder's `grid/`; the
grids are the node's UI images, and the first grid is passed on as an IMAGE."""

from __future__ import annotations

import math

from lienzo.graph.nodes.sampling import CFG, SEED, STEPS, generation_settings, sampler_inputs
from lienzo.graph.nodes.xray_node import PIXELS, reserve_folder
from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.values import pil_to_images
from lienzo.pipelines.grid import plot_grid
from lienzo.pipelines.grid_axes import parse_axis

GRID_FOLDER = "grid"
FLAGS = ("X axis", "Y axis", "Z axis")


def grid(
    context,
    model,
    text: str,
    negative: str,
    x_axis: str,
    y_axis: str,
    z_axis: str,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    width: int,
    height: int,
    filename_prefix: str,
):
    """One image per combination of the axes' values (`NAME=V1,V2,...`; Y and Z may be empty), all checked
    before any image is made; progress per cell, interruption between cells."""
    axes = [
        parse_axis(axis, flag) if axis.strip() else None
        for axis, flag in zip((x_axis, y_axis, z_axis), FLAGS, strict=True)
    ]
    total = math.prod(len(axis.values) for axis in axes if axis is not None)
    finished = []

    def on_cell(cell, image) -> None:
        finished.append(cell)
        context.progress(len(finished), total)
        context.check_interrupt()

    result = plot_grid(
        model,
        text,
        axes,
        callback=on_cell,
        fast=model.fast,
        **generation_settings(negative, seed, steps, cfg, sampler_name, scheduler, width, height),
    )
    folder, subfolder = reserve_folder(context.environment.output_dir, GRID_FOLDER, filename_prefix)
    written = result.save(folder)
    names = [path.name for path in written if path.parent == folder]
    ui = {"images": [{"filename": name, "subfolder": subfolder, "type": "output"} for name in names]}
    return {"ui": ui, "result": (pil_to_images([result.grids[0].convert("RGB")]),)}


register(
    NodeType(
        "LienzoGrid",
        grid,
        (
            Input("model", "MODEL"),
            Input("text", "STRING", {"multiline": True, "default": "a red circle on a white background"}),
            Input("negative", "STRING", {"multiline": True, "default": ""}),
            Input("x_axis", "STRING", {"default": "cfg=3,7,11"}),
            Input("y_axis", "STRING", {"default": ""}),
            Input("z_axis", "STRING", {"default": ""}),
            Input("seed", "INT", SEED),
            Input("steps", "INT", STEPS),
            Input("cfg", "FLOAT", CFG),
            *sampler_inputs(),
            Input("width", "INT", PIXELS),
            Input("height", "INT", PIXELS),
            Input("filename_prefix", "STRING", {"default": "lienzo"}),
        ),
        ("IMAGE",),
        category="lienzo/grid",
        display_name="Parameter Grid (X/Y/Z plot)",
        description="One image per combination of up to three axes of settings, drawn as labelled grids.",
        output_node=True,
        python_module="lienzo.graph.nodes.grid_node",
    )
)
