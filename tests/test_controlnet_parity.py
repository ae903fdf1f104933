"""ControlNet generation against diffusers' StableDiffusion(XL)ControlNetPipeline on identical tiny weights.

lienzo reads the ControlNet from an ldm single file written through its key map, diffusers runs the
original ControlNetModel; both sample Euler over the same Karras sigmas from the same seeded noise. The
tiny VAE downsamples 2x, so the hint block has one strided convolution, read off the weights.
"""

from __future__ import annotations

import diffusers
import pytest
import torch

import lienzo
from controlnet_models import control_image, controlnet_file, tiny_controlnet
from lienzo.pipelines.generation import generate_latents
from lienzo.pipelines.options import resolve_options
from lienzo.pipelines.steps import initial_noise, latent_shape, schedule_sigmas
from tiny_models import tiny_pipeline_folder

pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-3
SIZE = 32
STEPS = 4
CFG = 6.0
PROMPT = "a red circle in the top left on a blue background"
NEGATIVE = "blurry, green"
SEED = 7
SETTINGS = {
    "prompt": PROMPT,
    "negative_prompt": NEGATIVE,
    "width": SIZE,
    "height": SIZE,
    "steps": STEPS,
    "cfg": CFG,
    "sampler": "euler",
    "scheduler": "karras",
    "seed": SEED,
}


def reference_pipeline(family: str, controlnets: list):
    """diffusers' ControlNet pipeline on the tiny folder with these ControlNets, Euler with Karras sigmas."""
    folder = tiny_pipeline_folder(family)
    controlnet = controlnets[0] if len(controlnets) == 1 else diffusers.MultiControlNetModel(controlnets)
    if family == "sdxl":
        reference = diffusers.StableDiffusionXLControlNetPipeline.from_pretrained(
            folder, controlnet=controlnet
        )
    else:
        reference = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
            folder, controlnet=controlnet, safety_checker=None, requires_safety_checker=False
        )
    reference.scheduler = diffusers.EulerDiscreteScheduler.from_config(
        reference.scheduler.config, use_karras_sigmas=True, timestep_spacing="linspace"
    )
    reference.set_progress_bar_config(disable=True)
    return reference


def lienzo_latents(family: str, units: list[dict], **values) -> torch.Tensor:
    """lienzo's final latents with one ControlNet unit per dict (seed, strength, start, end, mode), the
    ControlNet read from an ldm single file."""
    pipe = lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32)
    controls = [
        lienzo.ControlUnit(
            controlnet_file(family, unit["seed"]),
            control_image(SIZE, unit["seed"]),
            strength=unit.get("strength", 1.0),
            start=unit.get("start", 0.0),
            end=unit.get("end", 1.0),
            mode=unit.get("mode", "balanced"),
        )
        for unit in units
    ]
    options = resolve_options(pipe.spec, **SETTINGS, **pipe.resolve_controlnets({"controlnets": controls}))
    return generate_latents(pipe, options, progress=False)


def reference_latents(family: str, units: list[dict]) -> torch.Tensor:
    """diffusers' final latents for the same units (guess mode when every unit is in "control" mode)."""
    pipe = lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32)
    options = resolve_options(pipe.spec, **SETTINGS)
    reference = reference_pipeline(family, [tiny_controlnet(family, unit["seed"]) for unit in units])
    reference.scheduler.set_timesteps(STEPS)
    sigmas = schedule_sigmas(pipe.spec, options)
    assert torch.allclose(reference.scheduler.sigmas.float(), sigmas, rtol=1e-4)
    start = initial_noise(options, latent_shape(pipe.spec, SIZE, SIZE)) * sigmas[0]
    start = start / reference.scheduler.init_noise_sigma
    images = [control_image(SIZE, unit["seed"]) for unit in units]
    scales = [unit.get("strength", 1.0) for unit in units]
    single = len(units) == 1
    with torch.no_grad():
        return reference(
            PROMPT,
            negative_prompt=NEGATIVE,
            image=images[0] if single else images,
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            guidance_scale=CFG,
            latents=start,
            output_type="latent",
            controlnet_conditioning_scale=scales[0] if single else scales,
            control_guidance_start=[unit.get("start", 0.0) for unit in units],
            control_guidance_end=[unit.get("end", 1.0) for unit in units],
            guess_mode={unit.get("mode", "balanced") for unit in units} == {"control"},
        ).images


CASES = {
    "plain": [{"seed": 1}],
    "strength": [{"seed": 1, "strength": 0.6}],
    "start-end": [{"seed": 1, "strength": 1.3, "start": 0.25, "end": 0.75}],
    "guess-mode": [{"seed": 1, "mode": "control", "strength": 0.8}],
    "two-units": [{"seed": 1, "strength": 0.7}, {"seed": 2, "strength": 0.5, "end": 0.5}],
}


@pytest.mark.parametrize("case", list(CASES))
def test_sd1_controlnet_latents_match_diffusers(case):
    ours, expected = lienzo_latents("sd1", CASES[case]), reference_latents("sd1", CASES[case])
    error = (ours - expected).abs().max().item()
    print(
        f"sd1 ControlNet {case}: latent max abs error {error:.2e} (latent scale {expected.abs().max():.2f})"
    )
    assert error < TOLERANCE


@pytest.mark.parametrize("case", ["strength", "guess-mode"])
def test_sdxl_controlnet_latents_match_diffusers(case):
    ours, expected = lienzo_latents("sdxl", CASES[case]), reference_latents("sdxl", CASES[case])
    error = (ours - expected).abs().max().item()
    print(
        f"sdxl ControlNet {case}: latent max abs error {error:.2e} (latent scale {expected.abs().max():.2f})"
    )
    assert error < TOLERANCE


def test_strength_zero_equals_no_controlnet_and_strength_one_differs():
    pipe = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    without = generate_latents(pipe, resolve_options(pipe.spec, **SETTINGS), progress=False)
    assert torch.equal(lienzo_latents("sd1", [{"seed": 1, "strength": 0.0}]), without)
    assert (lienzo_latents("sd1", [{"seed": 1}]) - without).abs().max().item() > 0.05
