"""The models, variants and step functions of bench/gpu_speed.py: what one denoising step runs in each
library."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lienzo.models.conditioning import Conditioning
from lienzo.models.specs import SD1, SDXL, FamilySpec
from lienzo.models.unet import UNetConfig, sdxl_vector_conditioning
from lienzo.pipelines.compiling import compile_unet
from lienzo.pipelines.steps import vector_values


@dataclass(frozen=True)
class Case:
    """One UNet and the inputs of one step: latent size, text context width, SDXL pooled width (0: none)."""

    label: str
    config: UNetConfig
    latent: int
    pooled: int = 0
    vector_kind: str | None = None


@dataclass(frozen=True)
class Variant:
    """One measured row pair: which case and which torch.compile mode (None: eager)."""

    case: str
    label: str
    mode: str | None


VARIANTS = {
    "sd15-eager": Variant("sd15", "eager", None),
    "sd15-compile": Variant("sd15", "torch.compile", "default"),
    "sdxl-eager": Variant("sdxl", "eager", None),
    "sdxl-compile": Variant("sdxl", "torch.compile", "default"),
    "sd15-cudagraphs": Variant("sd15", "compile reduce-overhead", "reduce-overhead"),
    "sdxl-cudagraphs": Variant("sdxl", "compile reduce-overhead", "reduce-overhead"),
}
"""In the default order: the most important figures first."""

ESTIMATES = {
    "sd15-eager": 30.0,
    "sd15-compile": 150.0,
    "sdxl-eager": 60.0,
    "sdxl-compile": 300.0,
    "sd15-cudagraphs": 150.0,
    "sdxl-cudagraphs": 300.0,
}
"""Guessed seconds of each variant on an H100-class GPU, both libraries, building the networks and a cold
compile cache included (inductor compiles with one worker per CPU core)."""


NAMES = {"sd15": "SD 1.5", "sdxl": "SDXL"}


def _spec_case(name: str, spec: FamilySpec, latent: int, tiny: bool) -> Case:
    size = f"tiny UNet, {latent}x{latent} latent" if tiny else f"{8 * latent}x{8 * latent}"
    label = f"{NAMES[name]} {size}"
    pooled = (spec.text_encoders[-1].config.projection_dim or 0) if spec.vector_conditioning else 0
    return Case(label, spec.unet, latent, pooled, spec.vector_conditioning)


def case_for(name: str, tiny: bool) -> Case:
    """The SD 1.5 or SDXL case at full size, or with tests/tiny_models.py's tiny configs (16x16 latents)."""
    if not tiny:
        return _spec_case(name, {"sd15": SD1, "sdxl": SDXL}[name], {"sd15": 64, "sdxl": 128}[name], tiny)
    try:
        from tiny_models import tiny_spec
    except ImportError as error:
        raise SystemExit("--tiny reads tests/tiny_models.py: run with PYTHONPATH=src:tests") from error
    return _spec_case(name, tiny_spec({"sd15": "sd1", "sdxl": "sdxl"}[name]), 16, tiny)


def step_inputs(case: Case, batch: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Seeded random latents, timestep, text context and (SDXL) pooled embedding and size/crop ids for the
    CFG batch, on the device, latents channels_last."""
    rows = 2 * batch
    generator = torch.Generator().manual_seed(1)
    latent = (rows, case.config.in_channels, case.latent, case.latent)
    inputs = {
        "x": torch.randn(latent, generator=generator).to(device, dtype, memory_format=torch.channels_last),
        "t": torch.full((rows,), 500.0, device=device),
        "context": torch.randn(rows, 77, case.config.context_dim, generator=generator).to(device, dtype),
    }
    if case.vector_kind is not None:
        size = case.latent * 8
        inputs["pooled"] = torch.randn(rows, case.pooled, generator=generator).to(device, dtype)
        inputs["time_ids"] = (
            vector_values(case.vector_kind, size, size, 6.0).expand(rows, -1).to(device, dtype)
        )
    return inputs


def step_functions(
    case: Case, networks: dict, mode: str | None, batch: int, device: torch.device
) -> tuple[dict[str, Callable[[], torch.Tensor]], Callable[[], None]]:
    """One denoising step per library (`networks`: name -> UNet), compiled when `mode` is given, and the
    function that undoes the compiling afterwards."""
    ours = networks["lienzo"]
    dtype = next(ours.parameters()).dtype
    inputs = step_inputs(case, batch, device, dtype)
    y = None
    if case.vector_kind is not None:
        y = sdxl_vector_conditioning(
            inputs["pooled"], inputs["time_ids"], case.config.addition_time_embed_dim
        )
    cond = Conditioning(context=inputs["context"], y=y)
    if mode is not None:
        compile_unet(ours, mode=None if mode == "default" else mode)
    steps = {"lienzo": lambda: ours(inputs["x"], inputs["t"], cond)}
    reference = networks.get("diffusers")
    if reference is not None:
        added = None
        if case.vector_kind is not None:
            added = {"text_embeds": inputs["pooled"], "time_ids": inputs["time_ids"]}
        if mode is not None:
            reference = torch.compile(reference, mode=None if mode == "default" else mode, fullgraph=True)
        steps["diffusers"] = lambda: reference(
            inputs["x"], inputs["t"], inputs["context"], added_cond_kwargs=added, return_dict=False
        )[0]
    if mode == "reduce-overhead":
        steps = {name: _new_graph_step(step) for name, step in steps.items()}

    def restore() -> None:
        if mode is not None:
            del ours.forward
            torch._dynamo.reset()

    return steps, restore


def _new_graph_step(step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """`step` preceded by torch.compiler.cudagraph_mark_step_begin(): each call is a new CUDA-graph
    iteration, so replays may reuse the previous output's memory."""

    def marked() -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return step()

    return marked
