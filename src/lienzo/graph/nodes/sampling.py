"""Sampler nodes: KSampler and KSamplerAdvanced over lienzo.pipelines.ksampler, with progress, previews and
interruption between steps."""

from __future__ import annotations

from lienzo.diffusion import SAMPLERS, SCHEDULERS
from lienzo.graph.nodes.control import with_loaded_controlnets
from lienzo.graph.previews import sampler_preview
from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.values import SCALE_KEY, latent_for
from lienzo.pipelines.ksampler import ksample, ksampler_sigmas

SAMPLER_ALIASES = {
    "dpmpp_sde_gpu": "dpmpp_sde",
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
    "dpmpp_3m_sde_gpu": "dpmpp_3m_sde",
}
"""ComfyUI's `_gpu` variants draw their noise on the GPU; lienzo draws all noise on the CPU."""
SAMPLER_NAMES = (*SAMPLERS, *SAMPLER_ALIASES)
SEED = {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}
STEPS = {"default": 20, "min": 1, "max": 10000}
CFG = {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}
PREVIEW_EVERY = 1
"""Sampler steps between previews."""


def generation_settings(
    negative: str,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    width: int,
    height: int,
) -> dict:
    """A node's sampling widgets as the keyword settings of lienzo's generation functions."""
    return {
        "negative_prompt": negative,
        "seed": seed,
        "steps": steps,
        "cfg": cfg,
        "sampler": SAMPLER_ALIASES.get(sampler_name, sampler_name),
        "scheduler": scheduler,
        "width": width,
        "height": height,
    }


def step_callback(context, pipe):
    """The sampler's per-step callback: interruption check, progress, and a preview by the environment's
    preview method when wanted."""
    environment = context.environment
    method = environment.preview_method

    def on_step(state: dict) -> None:
        context.check_interrupt()
        step, total = state["i"] + 1, state["total"]
        context.progress(step, total)
        if context.previews and method != "none" and (step % PREVIEW_EVERY == 0 or step == total):
            context.preview(sampler_preview(method, environment.library, pipe, state["denoised"][0]))

    return on_step


def run_ksampler(
    context, model, positive, negative, latent_image: dict, sigmas, *, seed, cfg, sampler_name, add_noise
):
    samples = ksample(
        model.unet,
        model.spec,
        with_loaded_controlnets(positive, model),
        with_loaded_controlnets(negative, model),
        latent_for(latent_image, model.spec.vae.scaling_factor, model.spec.vae.embed_dim),
        sigmas,
        seed=seed,
        cfg=cfg,
        sampler=SAMPLER_ALIASES.get(sampler_name, sampler_name),
        add_noise=add_noise,
        noise_mask=latent_image.get("noise_mask"),
        callback=step_callback(context, model),
        progress=False,
        fast=model.fast,
    )
    return ({**latent_image, "samples": samples.cpu(), SCALE_KEY: model.spec.vae.scaling_factor},)


def ksampler(
    context, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise
):
    """Denoise the latent with the model, the positive and negative conditionings (ComfyUI's KSampler)."""
    sigmas = ksampler_sigmas(model.spec, scheduler, steps, denoise=denoise)
    run = {"seed": seed, "cfg": cfg, "sampler_name": sampler_name, "add_noise": True}
    return run_ksampler(context, model, positive, negative, latent_image, sigmas, **run)


def ksampler_advanced(
    context, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
    latent_image, start_at_step, end_at_step, return_with_leftover_noise,
):  # fmt: skip
    """KSampler over a slice of the steps, optionally without adding noise or leaving the leftover noise."""
    sigmas = ksampler_sigmas(
        model.spec,
        scheduler,
        steps,
        start_step=start_at_step,
        last_step=end_at_step,
        force_full_denoise=return_with_leftover_noise != "enable",
    )
    run = {"seed": noise_seed, "cfg": cfg, "sampler_name": sampler_name, "add_noise": add_noise == "enable"}
    return run_ksampler(context, model, positive, negative, latent_image, sigmas, **run)


def sampler_inputs() -> tuple[Input, ...]:
    return (
        Input("sampler_name", "COMBO", choices=SAMPLER_NAMES),
        Input("scheduler", "COMBO", choices=tuple(SCHEDULERS)),
    )


register(
    NodeType(
        "KSampler",
        ksampler,
        (
            Input("model", "MODEL"),
            Input("seed", "INT", SEED),
            Input("steps", "INT", STEPS),
            Input("cfg", "FLOAT", CFG),
            *sampler_inputs(),
            Input("positive", "CONDITIONING"),
            Input("negative", "CONDITIONING"),
            Input("latent_image", "LATENT"),
            Input("denoise", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        ),
        ("LATENT",),
        category="sampling",
        description="Denoises the latent image with the model and the positive and negative conditioning.",
    )
)
register(
    NodeType(
        "KSamplerAdvanced",
        ksampler_advanced,
        (
            Input("model", "MODEL"),
            Input("add_noise", "COMBO", choices=("enable", "disable")),
            Input("noise_seed", "INT", SEED),
            Input("steps", "INT", STEPS),
            Input("cfg", "FLOAT", CFG),
            *sampler_inputs(),
            Input("positive", "CONDITIONING"),
            Input("negative", "CONDITIONING"),
            Input("latent_image", "LATENT"),
            Input("start_at_step", "INT", {"default": 0, "min": 0, "max": 10000}),
            Input("end_at_step", "INT", {"default": 10000, "min": 0, "max": 10000}),
            Input("return_with_leftover_noise", "COMBO", choices=("disable", "enable")),
        ),
        ("LATENT",),
        category="sampling",
        display_name="KSampler (Advanced)",
        description="KSampler over a range of the steps, with control over the added and leftover noise.",
    )
)
