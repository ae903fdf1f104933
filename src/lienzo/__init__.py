"""lienzo: Stable Diffusion, built whole."""

from lienzo.diffusion import SAMPLERS, SCHEDULERS
from lienzo.errors import LienzoError
from lienzo.models.cpu_attention import set_cpu_attention
from lienzo.models.packed_conv import set_weight_packing
from lienzo.pipelines.control_units import ControlUnit
from lienzo.pipelines.controlnets import load_controlnet
from lienzo.pipelines.fast_modes import FastModes
from lienzo.pipelines.pipeline import Pipeline, load

__all__ = [
    "SAMPLERS",
    "SCHEDULERS",
    "ControlUnit",
    "FastModes",
    "LienzoError",
    "Pipeline",
    "load",
    "load_controlnet",
    "set_cpu_attention",
    "set_weight_packing",
]
__version__ = "0.1.0"
