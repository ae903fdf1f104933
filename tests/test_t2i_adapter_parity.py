"""T2I-Adapter generation against diffusers' StableDiffusionAdapterPipeline and
StableDiffusionXLAdapterPipeline on identical tiny weights: lienzo reads the adapters from diffusers
folders; both sample Euler over the same Karras sigmas from the same seeded noise."""

from __future__ import annotations

from dataclasses import replace

import diffusers
import pytest
import torch

import lienzo
from controlnet_models import control_image
from lienzo.pipelines.generation import generate_latents
from lienzo.pipelines.options import resolve_options
from lienzo.pipelines.steps import initial_noise, latent_shape, schedule_sigmas
from t2i_adapter_models import adapter_folder, reference_adapter, sdxl_three_level_folder
from tiny_models import tiny_pipeline_folder

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, STEPS, CFG = 32, 4, 6.0
PROMPT, NEGATIVE = "a red circle", "blurry"
SETTINGS = {"sampler": "euler", "scheduler": "karras", "width": SIZE, "height": SIZE, "steps": STEPS}
CASES = {
    "sd1-plain": [(1, 1.0, 1.0)],
    "sd1-strength": [(1, 0.6, 1.0)],
    "sd1-two-adapters": [(1, 0.7, 1.0), (2, 0.5, 1.0)],
    "sdxl-plain": [(1, 1.0, 1.0)],
    "sdxl-strength-end": [(1, 0.8, 0.5)],
}
"""Units as (adapter seed, strength, end); the control image's seed is the adapter's. The SDXL model is the
tiny SDXL folder with a 3-level UNet, so the "xl" adapter's fourth feature goes after the middle block."""


def family_parts(case: str):
    """(model folder, tiny adapter name, diffusers pipeline class, its extra arguments) of a case."""
    if case.startswith("sdxl"):
        return sdxl_three_level_folder(), "xl", diffusers.StableDiffusionXLAdapterPipeline, {}
    extra = {"safety_checker": None, "requires_safety_checker": False}
    return tiny_pipeline_folder("sd1"), "full", diffusers.StableDiffusionAdapterPipeline, extra


def reference_latents(case: str, options) -> torch.Tensor:
    """diffusers' final latents of a case (MultiAdapter for two units; end: adapter_conditioning_factor)."""
    folder, name, pipeline_class, extra = family_parts(case)
    units = CASES[case]
    adapters = [reference_adapter(name, seed) for seed, _, _ in units]
    adapter = adapters[0] if len(units) == 1 else diffusers.MultiAdapter(adapters)
    reference = pipeline_class.from_pretrained(folder, adapter=adapter, **extra)
    reference.scheduler = diffusers.EulerDiscreteScheduler.from_config(
        reference.scheduler.config, use_karras_sigmas=True, timestep_spacing="linspace"
    )
    reference.set_progress_bar_config(disable=True)
    pipe = lienzo.load(folder, device="cpu", dtype=torch.float32)
    sigmas = schedule_sigmas(pipe.spec, options)
    start = initial_noise(options, latent_shape(pipe.spec, SIZE, SIZE)) * sigmas[0]
    images = [control_image(SIZE, seed) for seed, _, _ in units]
    scales = [strength for _, strength, _ in units]
    factor = {"adapter_conditioning_factor": units[0][2]} if case.startswith("sdxl") else {}
    with torch.no_grad():
        return reference(
            PROMPT,
            negative_prompt=NEGATIVE,
            image=images[0] if len(units) == 1 else images,
            num_inference_steps=STEPS,
            guidance_scale=CFG,
            height=SIZE,
            width=SIZE,
            latents=start / reference.scheduler.init_noise_sigma,
            output_type="latent",
            adapter_conditioning_scale=scales[0] if len(units) == 1 else scales,
            **factor,
        ).images


@pytest.mark.parametrize("case", list(CASES))
def test_generation_matches_diffusers_adapter_pipelines(case):
    folder, name, _, _ = family_parts(case)
    pipe = lienzo.load(folder, device="cpu", dtype=torch.float32)
    units = [
        lienzo.ControlUnit(adapter_folder(name, seed), control_image(SIZE, seed), strength=strength, end=end)
        for seed, strength, end in CASES[case]
    ]
    controlnets = pipe.resolve_controlnets({"controlnets": units})
    options = resolve_options(
        pipe.spec, prompt=PROMPT, negative_prompt=NEGATIVE, cfg=CFG, seed=7, **SETTINGS, **controlnets
    )
    ours = generate_latents(pipe, options, progress=False)
    expected = reference_latents(case, options)
    without = generate_latents(pipe, replace(options, controlnets=()), progress=False)
    error, effect = (ours - expected).abs().max().item(), (expected - without).abs().max().item()
    print(f"T2I-Adapter {case}: latent max abs error {error:.2e} (adapter's effect {effect:.1f})")
    assert error < 1e-3 and effect > 1.0
