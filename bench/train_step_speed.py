"""Time the built-in recipe's diffusion training step (UNet + CLIP text encoder, pre-encoded latents).

Usage: PYTHONPATH=src python bench/train_step_speed.py [--device cuda] [--batch 64] [--profile]
Builds the recipe's UNet and text encoder with random weights, a random latent pool and the world's
captions, then times optimizer steps of the training loop (warm-up steps excluded). `--profile` adds
torch.profiler tables: host time against device time tells whether the step is launch-bound.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from lienzo.devices import default_device, keep_freed_memory_for_reuse
from lienzo.models.clip import CLIPTextModel
from lienzo.models.unet import UNetModel
from lienzo.models.vae import AutoencoderKL
from lienzo.recipes.shapes import ShapesRecipe
from lienzo.recipes.shapes_data import LatentPool
from lienzo.training import LatentDiffusionObjective, read_trained_tokenizer, train_clip_tokenizer
from lienzo.training.distributed import ProcessGroup
from lienzo.training.loop import _Trainer
from lienzo.worlds.dataset import caption_corpus


def parse_args() -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
    parser.add_argument("--batch", type=int, default=64, help="latents per step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--precision", default="auto", help="auto, no, bf16 or fp16")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc as it is (train() tunes it on CPU)",
    )
    parser.add_argument("--profile", action="store_true", help="print profiler tables of 5 more steps")
    return parser.parse_args()


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    """Time the steps and print milliseconds per step and latents per second."""
    args = parse_args()
    device = torch.device(args.device) if args.device else default_device()
    if device.type == "cpu" and not args.default_malloc:
        keep_freed_memory_for_reuse()
    recipe = ShapesRecipe()
    folder = Path(tempfile.mkdtemp(prefix="lienzo-bench-tokenizer-"))
    train_clip_tokenizer(caption_corpus(2000, seed=0), recipe.tokenizer_vocab, folder)
    tokenizer = read_trained_tokenizer(folder)
    torch.manual_seed(0)
    text = CLIPTextModel(replace(recipe.text_encoder, vocab_size=len(tokenizer.vocab))).to(device)
    unet = UNetModel(recipe.unet).to(device)
    objective = LatentDiffusionObjective(
        unet,
        AutoencoderKL(recipe.vae).to(device),
        text,
        tokenizer,
        latent_scale=0.3,
        train_text_encoder=True,
        encoded_inputs=True,
        offset_noise=recipe.offset_noise,
    )
    pool = LatentPool(torch.randn(4096, 8, 16, 16).half(), recipe.data)
    config = replace(
        recipe.diffusion[0].training,
        batch_size=args.batch,
        mixed_precision=args.precision,
        progress_bar=False,
    )
    trainer = _Trainer(config, objective, device, ProcessGroup())
    for _ in range(3):
        trainer.train_step(pool)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(pool)
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    print(
        f"{device} batch {args.batch} precision {args.precision}: {seconds * 1000:.1f} ms/step, "
        f"{args.batch / seconds:.0f} latents/s"
    )
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(5):
                trainer.train_step(pool)
            synchronize(device)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
