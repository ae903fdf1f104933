"""Sampler previews of a graph run by ComfyUI's preview methods (`--preview-method`): `latent2rgb` (a
linear map per latent cell, lienzo.pipelines.preview), `taesd` (TAESD's tiny decoder from the models
folder's `vae_approx/`, ComfyUI's file names), `auto` (TAESD where its file for the model is there, else
latent2rgb) and `none`."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from PIL import Image

from lienzo.errors import InvalidArgumentError, LienzoError
from lienzo.io.library import BUILTIN_MODELS, ModelLibrary
from lienzo.io.taesd_files import load_tiny_decoder
from lienzo.models.specs import parse_family
from lienzo.models.taesd import TinyDecoder
from lienzo.pipelines.images import tensor_to_images
from lienzo.pipelines.pipeline import Pipeline, files_signature
from lienzo.pipelines.preview import latent_preview

log = logging.getLogger("lienzo.graph")

PREVIEW_METHODS = ("auto", "latent2rgb", "taesd", "none")
"""ComfyUI's preview methods."""
TAESD_NAMES = {
    "sd1": "taesd_decoder",
    "sd2": "taesd_decoder",
    "sd2-v": "taesd_decoder",
    "sdxl": "taesdxl_decoder",
    "sdxl-refiner": "taesdxl_decoder",
}
"""The TAESD decoder file (a name in `vae_approx/`) of each base family, as ComfyUI names them."""
_NOTED: set[str | None] = set()
"""Models whose missing TAESD decoder has been logged."""


def check_preview_method(method: str, library: ModelLibrary) -> None:
    """Refuse an unknown method, and `taesd` when `vae_approx/` holds no TAESD decoder."""
    if method not in PREVIEW_METHODS:
        choices = ", ".join(PREVIEW_METHODS)
        raise InvalidArgumentError(f"unknown preview method {method!r}; use one of {choices}")
    names = {entry.name for entry in library.list("vae_approx")}
    if method == "taesd" and not names & set(TAESD_NAMES.values()):
        folders = ", ".join(str(folder) for folder in library.folders("vae_approx"))
        raise InvalidArgumentError(
            f"--preview-method taesd needs TAESD's decoder in {folders}: taesd_decoder.safetensors "
            "(SD 1.x/2.x) or taesdxl_decoder.safetensors (SDXL); or use --preview-method auto"
        )


@functools.lru_cache(maxsize=2)
def _decoder(path: Path, signature: tuple, device: torch.device) -> TinyDecoder:
    return load_tiny_decoder(path, device=device)


def is_builtin(pipe: Pipeline) -> bool:
    """True for the built-in models, whose own VAEs TAESD's decoders do not approximate."""
    builtin = {folder.resolve() for _, folder in BUILTIN_MODELS["checkpoints"]}
    return pipe.path is not None and Path(pipe.path).resolve() in builtin


def tiny_decoder(library: ModelLibrary, pipe: Pipeline, device: torch.device) -> TinyDecoder | None:
    """The TAESD decoder for the model's family from `vae_approx/` on `device` (loaded once per file
    version), or None for a built-in model, where the folder has none for the family or it reads another
    number of latent channels."""
    spec = pipe.spec
    if is_builtin(pipe):
        return None
    try:
        path = library.resolve("vae_approx", TAESD_NAMES.get(parse_family(spec.name).base) or "")
    except LienzoError:
        return None
    decoder = _decoder(path, files_signature(path), device)
    return decoder if decoder.latent_channels == spec.vae.embed_dim else None


def sampler_preview(method: str, library: ModelLibrary, pipe: Pipeline, latent: torch.Tensor) -> Image.Image:
    """The preview of one (C, h, w) latent (the sampler's x0 estimate) by `method` (not `none`); a model
    without a fitting TAESD decoder gets latent2rgb's, as in ComfyUI (noted in the log once per model)."""
    decoder = None if method == "latent2rgb" else tiny_decoder(library, pipe, latent.device)
    if decoder is None:
        if method == "taesd" and pipe.name not in _NOTED:
            _NOTED.add(pipe.name)
            log.info("no TAESD decoder in vae_approx/ fits the model %s; latent2rgb previews", pipe.name)
        return latent_preview(pipe.vae, latent)
    with torch.inference_mode():
        decoded = decoder.decode(latent[None].detach().float())
    return tensor_to_images(decoded)[0]
