"""The pure steps every generation composes: conditioning, seeded noise, the denoiser, sampling, VAE.

Sampler state (latents, noise, sigmas) stays in float32; the networks run in the pipeline's dtype and
memory format, with inputs cast on the way in and outputs cast back to float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..diffusion import (
    Conditioning,
    Denoiser,
    ModelSampling,
    get_sigmas,
    guided_denoiser,
    parameterization_for,
    sample,
)
from ..diffusion.samplers.common import Denoise
from ..errors import InvalidArgumentError
from ..models.unet import sdxl_vector_conditioning
from ..models.vae_tiling import decode_tiled, encode_tiled
from .images import images_to_tensor, tensor_to_images
from .options import GenerationOptions

STOCHASTIC_SAMPLERS = frozenset(
    {
        "euler_ancestral",
        "dpm_2_ancestral",
        "dpmpp_2s_ancestral",
        "dpmpp_sde",
        "dpmpp_2m_sde",
        "dpmpp_3m_sde",
        "ddpm",
        "lcm",
    }
)
"""Samplers that draw fresh noise during sampling; their batch items run one at a time so that batch
item i draws exactly the noise of a single run with seed + i."""

AUTO_TILING_CELLS = 128 * 128
"""With `vae_tiling` None, latents with more cells than SDXL's native 1024x1024 image run the VAE in
tiles; every family's native size decodes whole, as in diffusers."""

StepCallback = Callable[[dict], None]
"""Called after every sampler step with the sampler's {"i", "x", "sigma", "sigma_next", "denoised"}
plus "stage" ("base", "refiner" or "hires"), "total" (steps in this stage) and "batch_start"."""


@dataclass(frozen=True)
class PromptTexts:
    """The text encoders' output for the prompt and the negative prompt (each with batch 1)."""

    positive: Conditioning
    negative: Conditioning
    pooled_positive: torch.Tensor | None
    pooled_negative: torch.Tensor | None


def encode_texts(pipe, options: GenerationOptions) -> PromptTexts:
    """Run the text encoders once for the prompt and the negative prompt together."""
    encoded = pipe.encode_prompt([options.prompt, options.negative_prompt], clip_skip=options.clip_skip)
    context = encoded.context.float()
    pooled = None if encoded.pooled is None else encoded.pooled.float()
    return PromptTexts(
        positive=Conditioning(context[:1]),
        negative=Conditioning(context[1:]),
        pooled_positive=None if pooled is None else pooled[:1],
        pooled_negative=None if pooled is None else pooled[1:],
    )


def vector_values(kind: str, width: int, height: int, aesthetic_score: float) -> torch.Tensor:
    """SDXL micro-conditioning (Podell et al. 2023, sec. 2.2): original size, crop (0, 0), target size or
    aesthetic score, as a (1, 6) or (1, 5) float tensor."""
    size_and_crop = [float(height), float(width), 0.0, 0.0]
    last = [float(height), float(width)] if kind == "sdxl" else [float(aesthetic_score)]
    return torch.tensor([size_and_crop + last])


def conditioning_pair(
    pipe,
    texts: PromptTexts,
    width: int,
    height: int,
    aesthetic_scores: tuple[float, float] = (6.0, 2.5),
) -> tuple[Conditioning, Conditioning]:
    """(cond, uncond) for the UNet: text contexts, plus the SDXL vector y at this image size."""
    kind = pipe.spec.vector_conditioning
    if kind is None:
        return texts.positive, texts.negative
    positive_y = sdxl_vector_conditioning(
        texts.pooled_positive, vector_values(kind, width, height, aesthetic_scores[0])
    )
    negative_y = sdxl_vector_conditioning(
        texts.pooled_negative, vector_values(kind, width, height, aesthetic_scores[1])
    )
    return (
        Conditioning(texts.positive.context, positive_y),
        Conditioning(texts.negative.context, negative_y),
    )


def prompt_conditioning(pipe, options: GenerationOptions) -> tuple[Conditioning, Conditioning]:
    """(cond, uncond) of the options' prompt and negative prompt at the options' size."""
    scores = (6.0, 2.5)
    if options.refiner is not None:
        scores = (options.refiner.aesthetic_score, options.refiner.negative_aesthetic_score)
    return conditioning_pair(pipe, encode_texts(pipe, options), options.width, options.height, scores)


def latent_shape(pipe, width: int, height: int) -> tuple[int, int, int]:
    """(channels, height, width) of one item's latent for an image of width x height pixels; a size that
    is not a multiple of the VAE's factor (8) raises InvalidArgumentError naming the nearest one."""
    factor = pipe.vae.downscale_factor
    for name, value in (("width", width), ("height", height)):
        if value % factor:
            nearest = max(factor, round(value / factor) * factor)
            raise InvalidArgumentError(
                f"{name} {value} does not fit this model: use a multiple of {factor}, e.g. {nearest}"
            )
    return pipe.spec.vae.embed_dim, height // factor, width // factor


def item_generators(options: GenerationOptions) -> list[torch.Generator]:
    """One CPU generator per batch item, item i seeded with seed + i."""
    return [torch.Generator("cpu").manual_seed(options.item_seed(i)) for i in range(options.batch_size)]


def slerp(t: float, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (Shoemake 1985), linear when nearly parallel."""
    cosine = (start.flatten() @ end.flatten()) / (start.norm() * end.norm())
    if cosine.abs() > 0.9995:
        return (1 - t) * start + t * end
    omega = torch.arccos(cosine)
    return (torch.sin((1 - t) * omega) * start + torch.sin(t * omega) * end) / torch.sin(omega)


def initial_noise(
    options: GenerationOptions,
    shape: tuple[int, ...],
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """(batch, *shape) float32 CPU noise: item i from seed + i, slerped toward the variation seed's noise.

    Variation (A1111 semantics): with a variation seed and strength s, item i's noise is
    slerp(s, noise(seed + i), noise(variation_seed + i)).
    """
    generators = generators or item_generators(options)
    items = []
    for index, generator in enumerate(generators):
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        variation_seed = options.item_variation_seed(index)
        if variation_seed is not None and options.variation_strength > 0:
            variation_generator = torch.Generator("cpu").manual_seed(variation_seed)
            variation = torch.randn(shape, generator=variation_generator, dtype=torch.float32)
            noise = slerp(options.variation_strength, noise, variation)
        items.append(noise)
    return torch.stack(items)


def batch_groups(options: GenerationOptions) -> list[tuple[int, int]]:
    """(start, count) groups of batch items sampled together: all at once, one by one for stochastic
    samplers (so each item's sampling noise comes from its own seed)."""
    if options.sampler in STOCHASTIC_SAMPLERS:
        return [(index, 1) for index in range(options.batch_size)]
    return [(0, options.batch_size)]


@functools.cache
def model_sampling() -> ModelSampling:
    """The sigma table of SD's discrete schedule (scaled_linear 0.00085-0.012, 1000 steps), shared by all
    families."""
    return ModelSampling.from_config()


def schedule_sigmas(options: GenerationOptions, steps: int | None = None) -> torch.Tensor:
    """The full float32 sigma schedule of the options' scheduler for `steps` (default options.steps)."""
    return get_sigmas(options.scheduler, steps or options.steps, model_sampling())


def network(pipe) -> Callable[..., torch.Tensor]:
    """The UNet as `unet(x, t, context, y)` taking float32 inputs and returning float32 output."""
    dtype = pipe.dtype

    def run(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None):
        x = x.to(dtype).contiguous(memory_format=torch.channels_last)
        y = None if y is None else y.to(dtype)
        return pipe.unet(x, t, context.to(dtype), y=y).float()

    return run


class ConcatChannels:
    """A UNet wrapper that appends fixed conditioning channels to its input (inpaint mask, depth map)."""

    def __init__(self, unet, extra: torch.Tensor):
        self.unet = unet
        self.extra = extra

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y=None) -> torch.Tensor:
        """unet(cat(x, extra), t, context, y) with `extra` repeated to x's batch (CFG doubles it)."""
        extra = self.extra.to(device=x.device, dtype=x.dtype)
        extra = extra.repeat(x.shape[0] // extra.shape[0], 1, 1, 1)
        return self.unet(torch.cat([x, extra], dim=1), t, context, y=y)


def make_denoiser(
    pipe,
    cond: Conditioning,
    uncond: Conditioning,
    options: GenerationOptions,
    extra: torch.Tensor | None = None,
) -> Denoise:
    """`denoise(x, sigma) -> x0` with classifier-free guidance (Ho & Salimans 2022) at options.cfg;
    `extra` channels (inpaint mask and masked image, depth) are appended to the UNet's input."""
    device = pipe.device
    unet = network(pipe) if extra is None else ConcatChannels(network(pipe), extra.to(device))
    denoiser = Denoiser(unet, parameterization_for(pipe.prediction), model_sampling())

    def on_device(c: Conditioning) -> Conditioning:
        return Conditioning(c.context.to(device), None if c.y is None else c.y.to(device))

    return guided_denoiser(
        denoiser, on_device(cond), on_device(uncond), options.cfg, guidance_rescale=options.guidance_rescale
    )


def inpaint_blend_denoiser(
    denoise: Denoise, latent: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor
) -> Denoise:
    """Latent blending for ordinary models (as in A1111/ComfyUI inpainting): before each model call the
    kept region (mask 0) of x becomes the original re-noised to the current sigma, and the model's x0
    estimate keeps the original there. `mask` is 1 where to repaint, shaped like `latent` or broadcastable.
    """

    def blended(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        level = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        renoised = latent + noise * level
        x = x * mask + renoised * (1 - mask)
        return denoise(x, sigma) * mask + latent * (1 - mask)

    return blended


def run_sampler(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: GenerationOptions,
    *,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    stage: str = "base",
    batch_start: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """Sample from x at sigmas[0] down to sigmas[-1] with the options' sampler, a tqdm bar and callback."""
    total = len(sigmas) - 1
    if total == 0:
        return x
    with tqdm(total=total, desc=f"{stage} {options.sampler}", disable=not progress, leave=False) as bar:

        def on_step(state: dict) -> None:
            bar.update(1)
            if callback is not None:
                callback({**state, "stage": stage, "total": total, "batch_start": batch_start})

        with torch.inference_mode():
            return sample(
                denoise,
                x.float(),
                sigmas.to(x.device),
                sampler=options.sampler,
                generator=generator,
                callback=on_step,
            )


def vae_tiled(pipe, latent_height: int, latent_width: int) -> bool:
    """Whether the VAE runs in tiles: `pipe.vae_tiling`, or where that is None, for latents with more
    cells than AUTO_TILING_CELLS."""
    if pipe.vae_tiling is None:
        return latent_height * latent_width > AUTO_TILING_CELLS
    return pipe.vae_tiling


def decode_latents(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """Images from diffusion latents: VAE-decode latents / latent_scale, one item at a time (in
    overlapping tiles for large latents, see vae_tiled)."""
    tiled = vae_tiled(pipe, *latents.shape[-2:])
    decode = functools.partial(decode_tiled, pipe.vae) if tiled else pipe.vae.decode
    images = []
    with torch.inference_mode():
        for item in latents:
            scaled = (item[None] / pipe.latent_scale).to(device=pipe.device, dtype=pipe.dtype)
            decoded = decode(scaled.contiguous(memory_format=torch.channels_last))
            images.extend(tensor_to_images(decoded))
    return images


def encode_images(pipe, images: list[Image.Image] | torch.Tensor) -> torch.Tensor:
    """Diffusion latents (float32) of images: latent_scale * the VAE posterior mean (in overlapping tiles
    for large images, see vae_tiled)."""
    pixels = images if isinstance(images, torch.Tensor) else images_to_tensor(images)
    factor = pipe.vae.downscale_factor
    tiled = vae_tiled(pipe, pixels.shape[-2] // factor, pixels.shape[-1] // factor)
    encode = functools.partial(encode_tiled, pipe.vae) if tiled else pipe.vae.encode
    latents = []
    with torch.inference_mode():
        for item in pixels:
            item = item[None].to(device=pipe.device, dtype=pipe.dtype)
            posterior = encode(item.contiguous(memory_format=torch.channels_last))
            latents.append(posterior.mean.float())
    return torch.cat(latents) * pipe.latent_scale


def attach_records(
    pipe, images: list[Image.Image], options: GenerationOptions, start: int = 0, mask: dict | None = None
) -> None:
    """Put each image's settings (GenerationOptions.to_record) into image.info["lienzo"]; inpainting adds
    its `mask` settings ({"blur", "only_masked", "padding"})."""
    for offset, image in enumerate(images):
        record = options.to_record(
            start + offset,
            model=getattr(pipe, "name", None),
            model_hash=getattr(pipe, "model_hash", None),
            family=pipe.family,
        )
        image.info["lienzo"] = {**record, "mask": mask}


def switch_index(steps: int, fraction: float) -> int:
    """Index of the sigma where a hand-off at `fraction` of `steps` happens (rounded to a step)."""
    return min(max(math.floor(fraction * steps + 0.5), 0), steps)
