"""The `Pipeline` object: a loaded model family (UNet, VAE, text encoders, tokenizers) and its prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..io import ModelFiles, read_model
from ..models.clip import CLIPTextModel
from ..models.specs import FamilySpec
from ..models.unet import UNetModel
from ..models.vae import AutoencoderKL
from ..text.conditioning import Conditioning, encode_prompts
from ..text.tokenizer import CLIPTokenizer


@dataclass
class Pipeline:
    """A ready-to-run model family; every network is in eval mode with gradients off."""

    family: str
    spec: FamilySpec
    unet: UNetModel
    vae: AutoencoderKL
    text_encoders: list[CLIPTextModel]
    tokenizers: list[CLIPTokenizer]

    @property
    def latent_scale(self) -> float:
        """The VAE scaling factor: diffusion runs on `latent_scale * vae.encode(image).mean`."""
        return self.spec.vae.scaling_factor

    @property
    def prediction(self) -> str:
        """What the UNet predicts: "eps" or "v"."""
        return self.spec.prediction

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @torch.inference_mode()
    def encode_prompt(self, prompts: list[str], *, clip_skip: int = 1) -> Conditioning:
        """Text conditioning of a batch of prompts (long prompts in 75-token chunks, A1111 style)."""
        encoders = list(zip(self.spec.text_encoders, self.text_encoders, self.tokenizers, strict=True))
        return encode_prompts(prompts, encoders, clip_skip=clip_skip)


def _build(module_class: type[nn.Module], config, state_dict: dict, device, dtype) -> nn.Module:
    """Build a network without random init (meta device) and take the checkpoint's tensors as its weights."""
    with torch.device("meta"):
        module = module_class(config)
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _tokenizer(folder: Path | None, pad_token: str) -> CLIPTokenizer:
    return (
        CLIPTokenizer.from_folder(folder)
        if folder is not None
        else CLIPTokenizer.from_bundled(pad_token=pad_token)
    )


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pipeline_from_files(files: ModelFiles, *, device=None, dtype=None) -> Pipeline:
    """Assemble a `Pipeline` from checkpoint state dicts already in lienzo's naming."""
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    spec = files.spec
    text_specs = spec.text_encoders
    return Pipeline(
        family=files.family,
        spec=spec,
        unet=_build(UNetModel, spec.unet, files.unet, device, dtype),
        vae=_build(AutoencoderKL, spec.vae, files.vae, device, dtype),
        text_encoders=[
            _build(CLIPTextModel, te.config, sd, device, dtype)
            for te, sd in zip(text_specs, files.text_encoders, strict=True)
        ],
        tokenizers=[
            _tokenizer(folder, te.pad_token)
            for te, folder in zip(text_specs, files.tokenizer_folders, strict=True)
        ],
    )


def load(path: str | Path, *, device=None, dtype=None, family: str | None = None) -> Pipeline:
    """Load a diffusers folder or a single-file checkpoint; `family` overrides detection (e.g. "sd2-v")."""
    return pipeline_from_files(read_model(path, family=family), device=device, dtype=dtype)
