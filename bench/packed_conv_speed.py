"""Packed convolutions and GroupNorm's float32 route, on and off, in one process, interleaved.

"off" runs every PackedConv2d as nn.Conv2d (the weight reordered by oneDNN on every call) and every
GroupNorm as nn.GroupNorm; "convs" packs the convolutions only; "on" is lienzo's default (both). Cases:
the built-in model's UNet at its default sampling shape (batch 2, 16x16 latent, one thread, as lienzo runs
it), its VAE decode, and a random SD 1.5 UNet (batch 2, 64x64 latent, every thread), all in bf16 (both
changes are bf16-only; the script needs a CPU for which oneDNN has bf16 kernels). Prints the median of
each variant, the ratio to "off" and the largest output difference to "off"; a second table times
GroupNorm alone at small maps.

    PYTHONPATH=src python bench/packed_conv_speed.py --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lienzo import load
from lienzo.models.conditioning import Conditioning
from lienzo.models.norms import GroupNorm
from lienzo.models.packed_conv import PackedConv2d, bf16_kernels
from lienzo.models.specs import SD1
from lienzo.models.unet import UNetModel

PACKED_FORWARD, GROUP_NORM_FORWARD = PackedConv2d.forward, GroupNorm.forward
VARIANTS = {
    "off": (nn.Conv2d.forward, nn.GroupNorm.forward),
    "convs": (PACKED_FORWARD, nn.GroupNorm.forward),
    "on": (PACKED_FORWARD, GROUP_NORM_FORWARD),
}


def builtin_cases(dtype: torch.dtype) -> dict[str, tuple[Callable[[], torch.Tensor], int, int]]:
    """The built-in model's UNet call and VAE decode at 128x128: (run, threads, calls per timing)."""
    pipe = load()
    unet, vae = pipe.unet.to(dtype), pipe.vae.to(dtype)
    x = torch.randn(2, 4, 16, 16).to(dtype).contiguous(memory_format=torch.channels_last)
    cond = Conditioning(torch.randn(2, 77, unet.config.context_dim).to(dtype))
    t = torch.tensor([500.0, 500.0])
    latent = torch.randn(1, 4, 16, 16).to(dtype).contiguous(memory_format=torch.channels_last)
    return {
        "built-in UNet, batch 2, 16x16": (lambda: unet(x, t, cond), 1, 10),
        "built-in VAE decode, 128x128": (lambda: vae.decode(latent), 1, 5),
    }


def sd_case(dtype: torch.dtype) -> dict[str, tuple[Callable[[], torch.Tensor], int, int]]:
    """A random SD 1.5 UNet at batch 2, 64x64 latent, every thread."""
    torch.manual_seed(0)
    unet = UNetModel(SD1.unet).to(dtype, memory_format=torch.channels_last).eval().requires_grad_(False)
    x = torch.randn(2, 4, 64, 64).to(dtype).contiguous(memory_format=torch.channels_last)
    cond = Conditioning(torch.randn(2, 77, 768).to(dtype))
    t = torch.tensor([500.0, 500.0])
    return {"SD 1.5 UNet, batch 2, 64x64": (lambda: unet(x, t, cond), torch.get_num_threads(), 1)}


def compare(name: str, run: Callable[[], torch.Tensor], threads: int, calls: int, repeats: int) -> None:
    """Time the variants interleaved (order alternating), print one table row per variant."""
    all_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for repeat in range(repeats + 1):
            order = list(VARIANTS) if repeat % 2 == 0 else list(VARIANTS)[::-1]
            for variant in order:
                PackedConv2d.forward, GroupNorm.forward = VARIANTS[variant]
                start = time.perf_counter()
                for _ in range(calls):
                    outputs[variant] = run()
                if repeat:
                    times[variant].append((time.perf_counter() - start) / calls)
    PackedConv2d.forward, GroupNorm.forward = PACKED_FORWARD, GROUP_NORM_FORWARD
    torch.set_num_threads(all_threads)
    base = statistics.median(times["off"])
    for variant, values in times.items():
        median = statistics.median(values)
        difference = (outputs[variant].float() - outputs["off"].float()).abs().max().item()
        row = f"| {name} | {threads} | {variant} | {median * 1e3:.2f} ms | {median / base:.3f} "
        print(row + f"| {difference:.4g} |", flush=True)


def group_norm_table(dtype: torch.dtype, repeats: int) -> None:
    """GroupNorm alone on channels_last maps: PyTorch's kernel against lienzo's route, one thread."""
    torch.set_num_threads(1)
    print()
    print("| groups x channels | map | batch | nn.GroupNorm | lienzo GroupNorm | ratio |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for groups, channels in ((16, 64), (16, 128), (32, 320), (32, 1280)):
            for side in (4, 8, 16, 32, 64):
                x = torch.randn(2, channels, side, side).to(dtype, memory_format=torch.channels_last)
                norm = GroupNorm(groups, channels).to(dtype)
                timings = {"plain": [], "lienzo": []}
                for _ in range(repeats * 4):
                    for label, forward in (("plain", nn.GroupNorm.forward), ("lienzo", GROUP_NORM_FORWARD)):
                        start = time.perf_counter()
                        forward(norm, x)
                        timings[label].append(time.perf_counter() - start)
                plain, ours = (statistics.median(timings[label]) for label in ("plain", "lienzo"))
                row = f"| {groups} x {channels} | {side}x{side} | 2 | {plain * 1e6:.0f} us "
                print(row + f"| {ours * 1e6:.0f} us | {ours / plain:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds of every variant (interleaved)")
    parser.add_argument("--sd-repeats", type=int, default=3, help="timed rounds for the SD 1.5 UNet")
    parser.add_argument("--skip-sd", action="store_true", help="leave out the SD 1.5 UNet")
    args = parser.parse_args()
    if not bf16_kernels():
        raise SystemExit("oneDNN has no bf16 kernels for this CPU: lienzo packs no convolutions here")
    dtype = torch.bfloat16
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {dtype}, channels_last, inference mode; {threads} threads")
    print()
    print("| case | threads | variant | median | ratio to off | max difference to off |")
    print("|---|---|---|---|---|---|")
    for name, (run, threads, calls) in builtin_cases(dtype).items():
        compare(name, run, threads, calls, args.repeats)
    if not args.skip_sd:
        for name, (run, threads, calls) in sd_case(dtype).items():
            compare(name, run, threads, calls, args.sd_repeats)
    group_norm_table(dtype, args.repeats)


if __name__ == "__main__":
    main()
