"""Filmstrip previews: the decoded x0 prediction every N sampler steps, side by side, labelled with the step;
and fast latent-to-RGB previews (a linear map fitted per VAE) for progress updates.

The picture of an image emerging from noise: each frame is the VAE decode of the sampler's current
estimate of the clean latent (the `denoised` value of the step callback), for the first batch item.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from PIL import Image, ImageDraw, ImageFont

from lienzo.errors import InvalidArgumentError
from lienzo.models.taesd import TinyDecoder
from lienzo.models.vae import AutoencoderKL
from lienzo.pipelines.images import tensor_to_images
from lienzo.pipelines.steps import decode_latents, encode_images

LABEL_HEIGHT = 14
LABEL_MARGIN = 2
BACKGROUND = (24, 24, 24)
LABEL_COLOUR = (235, 235, 235)


@dataclass(frozen=True)
class Frame:
    """One filmstrip frame: its label and the decoded prediction."""

    label: str
    image: Image.Image


@dataclass
class FilmstripRecorder:
    """A step callback that decodes the x0 prediction every `every` steps (and at each stage's last step),
    with the model's VAE or, given a `decoder`, TAESD's tiny one (lienzo.io.taesd_files)."""

    pipe: object
    every: int
    frames: list[Frame] = field(default_factory=list)
    decoder: TinyDecoder | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise InvalidArgumentError(f"preview interval must be 1 or more steps, got {self.every}")
        channels = self.pipe.spec.vae.embed_dim
        if self.decoder is not None and self.decoder.latent_channels != channels:
            raise InvalidArgumentError(
                f"the tiny preview decoder reads {self.decoder.latent_channels}-channel latents but this "
                f"model's have {channels}; use a decoder made for it, or leave out --preview-decoder"
            )

    def __call__(self, state: dict) -> None:
        """Record a frame when this step is due; only the first batch item is shown."""
        step, total = state["i"] + 1, state.get("total", state["i"] + 1)
        if step % self.every and step != total:
            return
        stage = state.get("stage", "base")
        label = f"step {step}" if stage == "base" else f"{stage} {step}"
        latent = state["denoised"][:1]
        if self.decoder is None:
            image = decode_latents(self.pipe.vae, latent)[0]
        else:
            weight = next(self.decoder.parameters())
            with torch.inference_mode():
                decoded = self.decoder.decode(latent.to(device=weight.device, dtype=weight.dtype))
            image = tensor_to_images(decoded)[0]
        self.frames.append(Frame(label, image))

    def filmstrip(self) -> Image.Image:
        """The recorded frames side by side (see `filmstrip`)."""
        return filmstrip(self.frames)


def filmstrip(frames: list[Frame]) -> Image.Image:
    """Frames in a row at the first frame's height, each under a band with its label."""
    if not frames:
        raise InvalidArgumentError("no preview frames were recorded; run at least one sampler step")
    height = frames[0].image.height
    font = ImageFont.load_default()
    scaled = [
        frame.image.resize((max(1, round(frame.image.width * height / frame.image.height)), height))
        for frame in frames
    ]
    widths = [
        max(image.width, round(font.getlength(frame.label)) + 2 * LABEL_MARGIN)
        for frame, image in zip(frames, scaled, strict=True)
    ]
    strip = Image.new("RGB", (sum(widths), height + LABEL_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    left = 0
    for frame, image, width in zip(frames, scaled, widths, strict=True):
        strip.paste(image, (left + (width - image.width) // 2, LABEL_HEIGHT))
        draw.text((left + LABEL_MARGIN, 1), frame.label, fill=LABEL_COLOUR, font=font)
        left += width
    return strip


PREVIEW_COLOURS = torch.tensor(
    [[r, g, b] for r in (0.0, 1.0) for g in (0.0, 1.0) for b in (0.0, 1.0)] + [[0.5] * 3]
)
"""The RGB cube's corners and mid grey: solid images whose latents fit a VAE's latent-to-RGB map."""
_LATENT_RGB: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def latent_rgb_map(vae: AutoencoderKL) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, 3) weights and (3,) bias of the least-squares linear map from a VAE's (scaled) latent to RGB in
    [0, 1], fitted on the latents of solid-colour images (ComfyUI's latent_rgb_factors, derived for any
    VAE); computed once per VAE."""
    if vae not in _LATENT_RGB:
        size = 8 * vae.downscale_factor
        pixels = PREVIEW_COLOURS[:, :, None, None].expand(-1, -1, size, size) * 2 - 1
        latents = encode_images(vae, pixels).mean(dim=(2, 3))
        design = torch.cat([latents, torch.ones(len(latents), 1)], dim=1)
        solution = torch.linalg.lstsq(design, PREVIEW_COLOURS).solution
        _LATENT_RGB[vae] = (solution[:-1], solution[-1])
    return _LATENT_RGB[vae]


def latent_preview(vae: AutoencoderKL, latent: torch.Tensor) -> Image.Image:
    """A fast RGB preview of one (C, h, w) latent: the fitted linear map per latent cell, at latent size."""
    weights, bias = latent_rgb_map(vae)
    rgb = torch.einsum("chw,cd->hwd", latent.detach().float().cpu(), weights) + bias
    return Image.fromarray((rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
