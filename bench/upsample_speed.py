"""Time nearest 2x upsampling + 3x3 convolution in its plain and its sub-pixel form, interleaved, at the
upsampler shapes of the SD 1.5 UNet and VAE decoder.

Usage: PYTHONPATH=src python bench/upsample_speed.py [--repeats 5] [--dtype float32] [--batch 2]
       PYTHONPATH=src python bench/upsample_speed.py --vae-decode 256 [--repeats 3]
Each case is channels x input cells; the folded kernel is cached (lienzo.models.upsampling.FoldedKernel)
as in sampling, so the times are the convolutions alone. Prints the medians and their ratio; the ratio
decides lienzo.models.upsampling.SUBPIXEL_MIN_CELLS. `--vae-decode SIZE` instead times whole decodes of
one SIZE x SIZE image by an SD 1.5-architecture VAE (seeded random weights, channels_last), and the time
spent inside its upsamplers, with the sub-pixel form switched off and on (the threshold set out of reach
and back), interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from same_weights import interleaved_rounds, wall_seconds
from torch import nn

import lienzo.models.upsampling as upsampling
from lienzo.models.specs import SD1
from lienzo.models.upsampling import FoldedKernel, upsample_conv
from lienzo.models.vae import AutoencoderKL, Upsample

CASES = (
    (1280, 4),
    (1280, 8),
    (1280, 16),
    (1280, 32),
    (640, 32),
    (640, 64),
    (512, 16),
    (512, 32),
    (512, 64),
    (512, 128),
    (256, 256),
)
"""(channels, input side): the SD 1.5 UNet's upsamplers (1280 and 640 channels) at 256-1024 px and the VAE
decoder's (512 and 256 channels) at 128-512 px."""


def time_case(channels: int, side: int, batch: int, dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """Median seconds of the plain and the sub-pixel form on one input, after one warm-up call of each,
    calls interleaved."""
    conv = nn.Conv2d(channels, channels, 3, padding=1).to(dtype=dtype, memory_format=torch.channels_last)
    x = torch.randn(batch, channels, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
    folded = FoldedKernel()
    forms = {
        "plain": wall_seconds(lambda: conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))),
        "sub-pixel": wall_seconds(lambda: upsample_conv(x, conv, folded)),
    }
    with torch.no_grad():
        times = interleaved_rounds(forms, repeats + 1)
    return statistics.median(times["plain"][1:]), statistics.median(times["sub-pixel"][1:])


class UpsamplerClock:
    """Seconds spent inside a network's VAE upsamplers, by hooks on the Upsample modules (their
    convolutions stay hook-free, so the sub-pixel form still applies)."""

    def __init__(self, vae: nn.Module) -> None:
        self.seconds = 0.0
        self.started = 0.0
        for module in vae.modules():
            if isinstance(module, Upsample):
                module.register_forward_pre_hook(self.start)
                module.register_forward_hook(self.stop)

    def start(self, module: nn.Module, inputs: tuple) -> None:
        self.started = time.perf_counter()

    def stop(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.seconds += time.perf_counter() - self.started


def time_vae_decode(size: int, dtype: torch.dtype, repeats: int) -> None:
    """Print the median seconds of whole decodes by the SD 1.5 VAE, and of its upsamplers within them,
    with the sub-pixel form off and on."""
    torch.manual_seed(0)
    vae = AutoencoderKL(SD1.vae).eval().to(dtype=dtype, memory_format=torch.channels_last)
    latents = torch.randn(1, SD1.vae.embed_dim, size // 8, size // 8, dtype=dtype)
    clock = UpsamplerClock(vae)
    inside: dict[str, list[float]] = {"plain": [], "sub-pixel": []}

    def decode(name: str, threshold: float) -> Callable[[], float]:
        def measure() -> float:
            upsampling.SUBPIXEL_MIN_CELLS = threshold
            clock.seconds = 0.0
            total = wall_seconds(lambda: vae.decode(latents))()
            inside[name].append(clock.seconds)
            return total

        return measure

    threshold = upsampling.SUBPIXEL_MIN_CELLS
    with torch.no_grad():
        totals = interleaved_rounds(
            {"plain": decode("plain", float("inf")), "sub-pixel": decode("sub-pixel", threshold)}, repeats + 1
        )
    upsampling.SUBPIXEL_MIN_CELLS = threshold
    medians = {}
    for name, runs in totals.items():
        medians[name] = statistics.median(runs[1:])
        listed = ", ".join(f"{total:.2f}" for total in runs[1:])
        heading = f"VAE decode {size}x{size}, {name}"
        upsamplers = statistics.median(inside[name][1:])
        print(f"{heading}: median {medians[name]:.2f} s (runs: {listed}), upsamplers {upsamplers:.2f} s")
    print(f"sub-pixel / plain, whole decode: {medians['sub-pixel'] / medians['plain']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each form (interleaved)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--vae-decode", type=int, metavar="SIZE", help="time whole VAE decodes instead")
    args = parser.parse_args()
    if args.vae_decode:
        time_vae_decode(args.vae_decode, getattr(torch, args.dtype), args.repeats)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, channels_last")
    print("| channels | input | plain ms | sub-pixel ms | sub-pixel / plain |")
    print("| --- | --- | --- | --- | --- |")
    for channels, side in CASES:
        plain, subpixel = time_case(channels, side, args.batch, getattr(torch, args.dtype), args.repeats)
        row = f"| {channels} | {side}x{side} | {plain * 1e3:.1f} | {subpixel * 1e3:.1f} |"
        print(f"{row} {subpixel / plain:.2f} |")


if __name__ == "__main__":
    main()
