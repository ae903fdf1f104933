"""End-to-end parity of txt2img / img2img with diffusers' pipelines on identical tiny weights.

Both sides run Euler over the same Karras sigmas (diffusers: EulerDiscreteScheduler with
use_karras_sigmas and linspace spacing) from identical seeded noise; the final latents must agree.
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor

import lienzo
from lienzo.pipelines.generation import generate_latents
from lienzo.pipelines.options import resolve_options
from lienzo.pipelines.steps import decode_latents, encode_images, initial_noise, latent_shape, schedule_sigmas
from tiny_models import tiny_pipeline_folder

TOLERANCE = 1e-3
SIZE = 32
STEPS = 4
PROMPT = "a red circle in the top left on a blue background"
NEGATIVE = "blurry, green"
SEED = 7


def euler_karras(reference) -> diffusers.EulerDiscreteScheduler:
    """diffusers' Euler with the Karras sigmas lienzo's `karras` schedule gives."""
    return diffusers.EulerDiscreteScheduler.from_config(
        reference.scheduler.config, use_karras_sigmas=True, timestep_spacing="linspace"
    )


def reference_pipeline(family: str):
    """diffusers' txt2img pipeline on the tiny folder, Euler with Karras sigmas."""
    folder = tiny_pipeline_folder(family)
    if family == "sdxl":
        reference = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    else:
        reference = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    reference.scheduler = euler_karras(reference)
    reference.set_progress_bar_config(disable=True)
    return reference


def lienzo_setup(family: str, folder=None, **values):
    """The family's tiny model (or the model at `folder`, uncached) in float32 and the parity options,
    `values` overriding them."""
    if folder is None:
        pipe = lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32)
    else:
        pipe = lienzo.load(folder, device="cpu", dtype=torch.float32, cache=False)
    settings = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "width": SIZE, "height": SIZE, "steps": STEPS}
    settings |= {"cfg": 6.0, "sampler": "euler", "scheduler": "karras", "seed": SEED}
    return pipe, resolve_options(pipe.spec, **(settings | values))


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def reference_latents(
    reference, pipe, options, prompt: str = PROMPT, negative: str | None = NEGATIVE, size: int = SIZE
) -> torch.Tensor:
    """diffusers' txt2img latents from lienzo's seeded start, Euler over the same Karras sigmas."""
    reference.scheduler.set_timesteps(STEPS)
    noise = initial_noise(options, latent_shape(pipe.spec, size, size))
    sigmas = schedule_sigmas(pipe.spec, options)
    assert torch.allclose(reference.scheduler.sigmas.float(), sigmas, rtol=1e-4)
    start = noise * sigmas[0] / reference.scheduler.init_noise_sigma
    with torch.no_grad():
        return reference(
            prompt,
            negative_prompt=negative,
            height=size,
            width=size,
            num_inference_steps=STEPS,
            guidance_scale=6.0,
            latents=start,
            output_type="latent",
        ).images


@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sdxl"])
def test_txt2img_latents_match_diffusers(family):
    pipe, options = lienzo_setup(family)
    ours = generate_latents(pipe, options, progress=False)
    expected = reference_latents(reference_pipeline(family), pipe, options)
    error = max_error(ours, expected)
    print(f"{family} txt2img latent max abs error: {error:.2e} (latent scale {expected.abs().max():.2f})")
    assert error < TOLERANCE


def test_img2img_latents_match_diffusers():
    pipe, options = lienzo_setup("sd1", strength=0.5, mode="img2img")
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    init_latents = encode_images(pipe.vae, image)
    ours = generate_latents(pipe, options, start=init_latents, progress=False)
    folder = tiny_pipeline_folder("sd1")
    reference = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(folder, safety_checker=None)
    reference.scheduler = euler_karras(reference)
    reference.set_progress_bar_config(disable=True)
    with torch.no_grad():
        expected_init = reference.vae.encode(image).latent_dist.mean * reference.vae.config.scaling_factor
        expected = reference(
            PROMPT,
            image=expected_init,
            negative_prompt=NEGATIVE,
            strength=0.5,
            num_inference_steps=STEPS,
            guidance_scale=6.0,
            generator=torch.Generator().manual_seed(SEED),
            output_type="latent",
        ).images
    assert max_error(init_latents, expected_init) < 1e-4
    error = max_error(ours, expected)
    print(f"sd1 img2img latent max abs error: {error:.2e}")
    assert error < TOLERANCE


def test_decoded_image_matches_diffusers_decode():
    pipe, _ = lienzo_setup("sd1")
    latents = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(2))
    ours = decode_latents(pipe.vae, latents)[0]
    reference = diffusers.AutoencoderKL.from_pretrained(tiny_pipeline_folder("sd1") / "vae").eval()
    with torch.no_grad():
        decoded = reference.decode(latents / reference.config.scaling_factor).sample
    expected = VaeImageProcessor().postprocess(decoded, output_type="pil")[0]
    difference = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    assert difference.max() <= 1
