"""Model patches for the fast modes (lienzo.pipelines.fast_modes): ComfyUI's TomePatchModel (token merging,
ToMe for SD) and LienzoFastModes (DeepCache's refresh interval and the CFG cutoff, which ComfyUI's core
lacks). Each passes on a new view of the MODEL whose fast modes the samplers downstream apply."""

from __future__ import annotations

from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.values import with_fast_modes
from lienzo.pipelines.fast_modes import MAX_TOME_RATIO

MAX_DEEPCACHE_INTERVAL = 1000
"""The largest DeepCache interval the node takes (ComfyUI's step limit is 10000; past the step count an
interval only refreshes on the first step)."""


def tome_patch_model(context, model, ratio: float):
    """The model with token merging at `ratio` (0 = none)."""
    return (with_fast_modes(model, tome=ratio),)


def fast_modes_patch(context, model, deepcache_interval: int, cfg_cutoff: float):
    """The model with DeepCache every `deepcache_interval` steps and guidance on the first `cfg_cutoff`
    of the steps (1 and 1.0: the exact path)."""
    return (with_fast_modes(model, deepcache=deepcache_interval, cfg_cutoff=cfg_cutoff),)


register(
    NodeType(
        "TomePatchModel",
        tome_patch_model,
        (
            Input("model", "MODEL"),
            Input("ratio", "FLOAT", {"default": 0.3, "min": 0.0, "max": MAX_TOME_RATIO, "step": 0.01}),
        ),
        ("MODEL",),
        category="_for_testing",
        python_module="comfy_extras.nodes_tomesd",
        description="Token merging (ToMe for SD): self-attention at the highest resolution runs on fewer "
        "tokens; faster, changes the image.",
    )
)
register(
    NodeType(
        "LienzoFastModes",
        fast_modes_patch,
        (
            Input("model", "MODEL"),
            Input("deepcache_interval", "INT", {"default": 1, "min": 1, "max": MAX_DEEPCACHE_INTERVAL}),
            Input("cfg_cutoff", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        ),
        ("MODEL",),
        category="lienzo/model_patches",
        display_name="Fast Modes (DeepCache, CFG cutoff)",
        description="DeepCache runs the whole UNet every N-th step and reuses its deep features between; "
        "the CFG cutoff keeps guidance for that fraction of the steps. Faster, changes the image.",
        python_module="lienzo.graph.nodes.fast_nodes",
    )
)
