"""lienzo: Stable Diffusion, built whole."""

from lienzo.diffusion import SAMPLERS, SCHEDULERS
from lienzo.errors import LienzoError
from lienzo.pipelines.pipeline import Pipeline, load

__all__ = ["SAMPLERS", "SCHEDULERS", "LienzoError", "Pipeline", "load"]
__version__ = "0.1.0"
