"""Depth-to-image for SD 2 depth models: a user's depth map becomes the UNet's fifth input channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..diffusion import img2img_sigmas
from ..errors import InvalidArgumentError
from .images import ImageInput, load_image, resize_image
from .img2img import img2img_size
from .options import resolve_options
from .steps import (
    StepCallback,
    attach_records,
    batch_groups,
    decode_latents,
    encode_images,
    initial_noise,
    item_generators,
    latent_shape,
    make_denoiser,
    prompt_conditioning,
    run_sampler,
    schedule_sigmas,
)

DEPTH_CHANNELS = 5
DepthInput = Image.Image | str | Path | torch.Tensor


def load_depth_map(depth: DepthInput) -> torch.Tensor:
    """A (1, 1, H, W) float32 depth map from an image (8- or 16-bit, any mode), a path or an (H, W) tensor."""
    if isinstance(depth, torch.Tensor):
        if depth.ndim != 2:
            raise InvalidArgumentError(f"a depth tensor must have shape (H, W), got {tuple(depth.shape)}")
        return depth.float()[None, None]
    if not isinstance(depth, Image.Image):
        path = Path(depth)
        try:
            with Image.open(path) as opened:
                depth = opened.copy()
        except FileNotFoundError as error:
            raise InvalidArgumentError(f"depth map {path} does not exist; check the path") from error
        except (UnidentifiedImageError, OSError) as error:
            raise InvalidArgumentError(
                f"cannot read {path} as an image; give a grayscale PNG depth map"
            ) from error
    if depth.mode not in ("I", "I;16", "F"):
        depth = depth.convert("L")
    values = np.asarray(depth, dtype=np.float32)
    return torch.from_numpy(values.copy())[None, None]


def depth_conditioning(depth: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Depth resized bicubically to latent size and scaled to [-1, 1] by its min and max, as diffusers.

    A constant depth map (no relief) gives zeros.
    """
    resized = F.interpolate(depth.float(), size=latent_size, mode="bicubic", align_corners=False)
    low = resized.amin(dim=(1, 2, 3), keepdim=True)
    high = resized.amax(dim=(1, 2, 3), keepdim=True)
    span = (high - low).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.where(high > low, 2.0 * (resized - low) / span - 1.0, torch.zeros_like(resized))


def depth2img(
    pipe,
    image: ImageInput,
    depth: DepthInput,
    prompt: str,
    *,
    strength: float = 0.8,
    width: int | None = None,
    height: int | None = None,
    callback: StepCallback | None = None,
    **settings,
) -> list[Image.Image]:
    """img2img guided by a depth map (SD 2 depth models): the map is the UNet's fifth input channel."""
    in_channels = pipe.spec.unet.in_channels
    if in_channels != DEPTH_CHANNELS:
        raise InvalidArgumentError(
            f"depth-to-image needs a depth model (5 input channels) but {pipe.family} takes {in_channels}; "
            "load an SD 2 depth checkpoint (family sd2-depth)"
        )
    source = load_image(image)
    width, height = img2img_size(source, width, height)
    options = resolve_options(
        pipe.spec, prompt=prompt, strength=strength, width=width, height=height, mode="depth2img", **settings
    )
    shape = latent_shape(pipe, options.width, options.height)
    extra = depth_conditioning(load_depth_map(depth), shape[1:])
    init = encode_images(pipe, [resize_image(source, options.width, options.height)])
    cond, uncond = prompt_conditioning(pipe, options)
    denoise = make_denoiser(pipe, cond, uncond, options, extra)
    sigmas = img2img_sigmas(schedule_sigmas(options), options.strength)
    images = []
    for start, count in batch_groups(options):
        group = options.items(start, count)
        generators = item_generators(group)
        noise = initial_noise(group, shape, generators).to(init.device)
        latents = run_sampler(
            denoise,
            init + noise * sigmas[0],
            sigmas,
            group,
            generator=generators[0],
            callback=callback,
            batch_start=start,
            progress=pipe.progress,
        )
        decoded = decode_latents(pipe, latents)
        attach_records(pipe, decoded, options, start)
        images.extend(decoded)
    return images
