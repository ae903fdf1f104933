"""Time whole txt2img runs (prompt to PIL image) in lienzo and in diffusers, same weights, same run.

Usage: PYTHONPATH=src python bench/txt2img_speed.py --repeats 2
Builds an SD 1.5-architecture pipeline with seeded random weights (CLIP-L, UNet, VAE), saves it as a
diffusers folder, loads it in both libraries in the chosen dtype with channels_last UNet/VAE, and
runs Euler over the same Karras sigmas from the same seed in both (diffusers: EulerDiscreteScheduler
with Karras sigmas). Prints median times and the ratio lienzo / diffusers (below 1 = lienzo faster).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

import lienzo
from lienzo.io.keymaps.clip import clip_config_to_transformers
from lienzo.io.keymaps.unet import unet_config_to_diffusers
from lienzo.io.keymaps.vae import vae_config_to_diffusers
from lienzo.models.specs import SD1
from lienzo.text.tokenizer import CLIPTokenizer

PROMPT = "a red circle above a blue square on a white background, studio light"
NEGATIVE = "blurry"


def parse_args() -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each library (interleaved)")
    parser.add_argument("--size", type=int, default=512, help="image width and height")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    return parser.parse_args()


def save_random_sd15(folder: Path) -> Path:
    """An SD 1.5-architecture diffusers folder with seeded random weights."""
    torch.manual_seed(0)
    text_config = clip_config_to_transformers(SD1.text_encoders[0].config)
    CLIPTokenizer.from_bundled().save(folder / "bundled-tokenizer")
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL(**vae_config_to_diffusers(SD1.vae)),
        text_encoder=transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_config)),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(folder / "bundled-tokenizer"),
        unet=UNet2DConditionModel(**unet_config_to_diffusers(SD1.unet), sample_size=64),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder / "sd15")
    return folder / "sd15"


def diffusers_pipeline(folder: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    """diffusers' pipeline on the folder: Euler with Karras sigmas, channels_last UNet and VAE."""
    pipeline = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None)
    pipeline.scheduler = EulerDiscreteScheduler.from_config(
        pipeline.scheduler.config, use_karras_sigmas=True, timestep_spacing="linspace"
    )
    pipeline.unet.to(memory_format=torch.channels_last)
    pipeline.vae.to(memory_format=torch.channels_last)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def timed(run) -> tuple[float, np.ndarray]:
    """Seconds one call of `run` takes, and its image as an array."""
    start = time.perf_counter()
    image = run()
    return time.perf_counter() - start, np.asarray(image, dtype=np.float64)


def main() -> None:
    """Build the model, time both libraries alternately, print medians, ratio and image difference."""
    args = parse_args()
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_random_sd15(Path(scratch))
        ours = lienzo.load(folder, device="cpu", dtype=dtype)
        reference = diffusers_pipeline(folder, dtype)
    settings = {"width": args.size, "height": args.size, "steps": args.steps, "cfg": args.cfg, "seed": 1}

    def run_ours():
        return ours.generate(
            PROMPT, negative_prompt=NEGATIVE, sampler="euler", scheduler="karras", **settings
        )[0]

    def run_reference():
        return reference(
            PROMPT,
            negative_prompt=NEGATIVE,
            width=args.size,
            height=args.size,
            num_inference_steps=args.steps,
            guidance_scale=args.cfg,
            generator=torch.Generator("cpu").manual_seed(1),
        ).images[0]

    times: dict[str, list[float]] = {"lienzo": [], "diffusers": []}
    images: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for repeat in range(args.repeats):
            order = [("lienzo", run_ours), ("diffusers", run_reference)]
            for name, run in order if repeat % 2 == 0 else reversed(order):
                seconds, images[name] = timed(run)
                times[name].append(seconds)
                print(f"{name}: {seconds:.2f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    paired = [ours_time / reference_time for ours_time, reference_time in zip(*times.values(), strict=True)]
    difference = np.abs(images["lienzo"] - images["diffusers"])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, "
        f"{args.size}x{args.size}, {args.steps} steps, cfg {args.cfg}, {args.repeats} repeats"
    )
    for name, values in times.items():
        runs = ", ".join(f"{value:.2f}" for value in values)
        print(f"{name:>9}: median {medians[name]:.2f} s  (runs: {runs})")
    print(f"ratio lienzo/diffusers (medians): {medians['lienzo'] / medians['diffusers']:.3f}")
    print(f"ratio lienzo/diffusers (median of per-repeat pairs): {statistics.median(paired):.3f}")
    print(
        f"image difference lienzo vs diffusers (0-255): "
        f"max {difference.max():.0f}, mean {difference.mean():.2f}"
    )


if __name__ == "__main__":
    main()
