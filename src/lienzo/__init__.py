"""lienzo: Stable Diffusion, built whole."""

from .diffusion import SAMPLERS, SCHEDULERS
from .errors import LienzoError
from .pipelines.pipeline import Pipeline, load

__all__ = ["SAMPLERS", "SCHEDULERS", "LienzoError", "Pipeline", "load"]
__version__ = "0.1.0"
