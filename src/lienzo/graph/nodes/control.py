"""ControlNet and control-image nodes: ControlNetLoader, ControlNetApply, ControlNetApplyAdvanced and Canny.

A CONTROL_NET is the resolved file; it is loaded for the model it guides when a sampler runs (so files
for any family, difference files included, are checked against that model and built on its device),
and kept for later runs. Apply nodes add a ControlUnit to each conditioning entry (ComfyUI chains them
the same way); start and end are fractions of the sampler's steps, as in lienzo's ControlNet units.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from lienzo.graph.nodes.loaders import file_changed, model_input
from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.values import images_to_pil, pil_to_images
from lienzo.io.library import ModelLibrary
from lienzo.pipelines.control_units import ControlUnit
from lienzo.pipelines.controlnets import LoadedControlNet, load_controlnet
from lienzo.pipelines.pipeline import files_signature
from lienzo.pipelines.preprocessors import canny

THRESHOLD = {"min": 0.01, "max": 0.99, "step": 0.01}
STRENGTH = {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}
PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}
CACHE_SIZE = 4


@dataclass(frozen=True)
class ControlNetFile:
    """A CONTROL_NET: the ControlNet's file or folder, resolved in the library."""

    path: Path


_LOADED: OrderedDict[tuple, tuple[weakref.ref, LoadedControlNet]] = OrderedDict()
"""ControlNets loaded for a model, by (path, file signature, the model's UNet), least recently used first."""


def loaded_for(reference: ControlNetFile, pipe) -> LoadedControlNet:
    """The ControlNet loaded for `pipe` (checked to fit it), read again only when its file changed."""
    key = (str(reference.path), files_signature(reference.path), id(pipe.unet))
    found = _LOADED.get(key)
    if found is not None and found[0]() is pipe.unet:
        _LOADED.move_to_end(key)
        return found[1]
    resolved = ModelLibrary(reference.path.parent, allow_paths=True)
    loaded = load_controlnet(reference.path, pipe, library=resolved)
    _LOADED[key] = (weakref.ref(pipe.unet), loaded)
    while len(_LOADED) > CACHE_SIZE:
        _LOADED.popitem(last=False)
    return loaded


def with_loaded_controlnets(entries: list, pipe) -> list:
    """A conditioning list whose ControlNet units hold ControlNets loaded for `pipe`."""
    return [
        replace(
            entry,
            control=tuple(
                replace(unit, model=loaded_for(unit.model, pipe))
                if isinstance(unit.model, ControlNetFile)
                else unit
                for unit in entry.control
            ),
        )
        for entry in entries
    ]


def controlnet_loader(context, control_net_name: str):
    """Resolve a ControlNet in the models folder's controlnet/ (loaded when a sampler uses it)."""
    return (ControlNetFile(context.environment.library.resolve("controlnet", control_net_name)),)


def add_unit(entries: list, unit: ControlUnit) -> list:
    return [replace(entry, control=(*entry.control, unit)) for entry in entries]


def controlnet_apply(context, conditioning, control_net, image, strength: float):
    """Guide a conditioning with a ControlNet and a control image at `strength`."""
    if strength == 0:
        return (conditioning,)
    unit = ControlUnit(control_net, images_to_pil(image)[0], strength)
    return (add_unit(conditioning, unit),)


def controlnet_apply_advanced(
    context,
    positive,
    negative,
    control_net,
    image,
    strength: float,
    start_percent: float,
    end_percent: float,
    vae=None,
):
    """Guide both conditionings with one ControlNet unit acting from start to end of the steps."""
    if strength == 0:
        return positive, negative
    unit = ControlUnit(control_net, images_to_pil(image)[0], strength, start_percent, end_percent)
    return add_unit(positive, unit), add_unit(negative, unit)


def canny_node(context, image, low_threshold: float, high_threshold: float):
    """Canny edges of each image, white on black, as an IMAGE."""
    low, high = low_threshold * 255, high_threshold * 255
    return (
        pil_to_images([canny(item, low_threshold=low, high_threshold=high) for item in images_to_pil(image)]),
    )


register(
    NodeType(
        "ControlNetLoader",
        controlnet_loader,
        (model_input("control_net_name", "controlnet"),),
        ("CONTROL_NET",),
        category="loaders",
        display_name="Load ControlNet Model",
        description="Loads a ControlNet from the models folder's controlnet/.",
        changed=file_changed("controlnet", "control_net_name"),
    )
)
register(
    NodeType(
        "ControlNetApply",
        controlnet_apply,
        (
            Input("conditioning", "CONDITIONING"),
            Input("control_net", "CONTROL_NET"),
            Input("image", "IMAGE"),
            Input("strength", "FLOAT", STRENGTH),
        ),
        ("CONDITIONING",),
        category="conditioning/controlnet",
        display_name="Apply ControlNet (OLD)",
        description="Guides a conditioning with a ControlNet and a control image.",
    )
)
register(
    NodeType(
        "ControlNetApplyAdvanced",
        controlnet_apply_advanced,
        (
            Input("positive", "CONDITIONING"),
            Input("negative", "CONDITIONING"),
            Input("control_net", "CONTROL_NET"),
            Input("image", "IMAGE"),
            Input("strength", "FLOAT", STRENGTH),
            Input("start_percent", "FLOAT", {"default": 0.0, **PERCENT}),
            Input("end_percent", "FLOAT", {"default": 1.0, **PERCENT}),
            Input("vae", "VAE", optional=True),
        ),
        ("CONDITIONING", "CONDITIONING"),
        output_names=("positive", "negative"),
        category="conditioning/controlnet",
        display_name="Apply ControlNet",
        description="Guides both conditionings with a ControlNet over part of the steps.",
    )
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
