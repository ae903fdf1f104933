"""Time 3x3 convolutions in the direct form (PyTorch's oneDNN kernel) and by Winograd's F(2x2, 3x3) and
F(4x4, 3x3), at the shapes of the SD 1.5 UNet and VAE decoder, float32, channels_last, interleaved.

Usage: PYTHONPATH=src python bench/winograd_speed.py [--repeats 5]
       PYTHONPATH=src python bench/winograd_speed.py --unet [--repeats 3]
       PYTHONPATH=src python bench/winograd_speed.py --vae-decode 512 [--repeats 3]
The table gives the direct form's median, each Winograd tile size's time as a ratio to it, the form lienzo
picks, and each form's largest difference to a float64 convolution (direct, F(2x2), F(4x4)); the Winograd
times include transforming the filter, as every call in lienzo does. The ratios decide
lienzo.models.winograd's WINOGRAD_MIN_CHANNELS and WINOGRAD_MIN_TILES. `--unet` times whole SD 1.5
UNet calls (batch 2, 64x64 latents, seeded random weights) and `--vae-decode SIZE` whole decodes of one
SIZE x SIZE image, each with the Winograd form switched off (the channel threshold out of reach) and on.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from same_weights import interleaved_rounds, wall_seconds

import lienzo.models.winograd as winograd
from lienzo.models.conditioning import Conditioning
from lienzo.models.specs import SD1
from lienzo.models.unet import UNetModel
from lienzo.models.vae import AutoencoderKL

CASES = (
    (320, 320, 64, 2),
    (640, 640, 32, 2),
    (960, 640, 32, 2),
    (1280, 1280, 16, 2),
    (2560, 1280, 16, 2),
    (1280, 1280, 8, 2),
    (2560, 1280, 8, 2),
    (512, 512, 64, 1),
    (512, 512, 128, 1),
    (512, 256, 256, 1),
    (256, 256, 256, 1),
    (256, 128, 512, 1),
    (128, 128, 512, 1),
)
"""(in channels, out channels, side, batch): the SD 1.5 UNet's convolutions at 512 px (batch 2: CFG) and
its VAE decoder's at 512 px."""


def time_case(in_channels: int, out_channels: int, side: int, batch: int, repeats: int) -> dict[str, tuple]:
    """Each form's median seconds, after a warm-up call of each, calls interleaved, and its largest
    difference to a float64 convolution; keyed "direct", "F(2x2)" and "F(4x4)"."""
    generator = torch.Generator().manual_seed(0)
    scale = (9 * in_channels) ** -0.5
    weight = (torch.randn(out_channels, in_channels, 3, 3, generator=generator) * scale).contiguous(
        memory_format=torch.channels_last
    )
    bias = torch.randn(out_channels, generator=generator)
    x = torch.randn(batch, in_channels, side, side, generator=generator).contiguous(
        memory_format=torch.channels_last
    )
    forms = {
        "direct": lambda: F.conv2d(x, weight, bias, padding=1),
        "F(2x2)": lambda: winograd.winograd_conv3x3(x, weight, bias, 2),
        "F(4x4)": lambda: winograd.winograd_conv3x3(x, weight, bias, 4),
    }
    with torch.no_grad():
        exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
        errors = {name: (form().double() - exact).abs().max().item() for name, form in forms.items()}
        del exact
        times = interleaved_rounds({name: wall_seconds(form) for name, form in forms.items()}, repeats + 1)
    return {name: (statistics.median(times[name][1:]), errors[name]) for name in forms}


@contextmanager
def winograd_off() -> Iterator[None]:
    """The direct form everywhere while inside (the channel threshold out of reach)."""
    saved = winograd.WINOGRAD_MIN_CHANNELS
    winograd.WINOGRAD_MIN_CHANNELS = 2**62
    try:
        yield
    finally:
        winograd.WINOGRAD_MIN_CHANNELS = saved


def compare_off_and_on(name: str, run: Callable[[], torch.Tensor], repeats: int) -> None:
    """Print the medians and runs of `run` with the form off and on (after a warm-up call of each, which
    gives the output difference), and their ratio."""

    def direct() -> torch.Tensor:
        with winograd_off():
            return run()

    with torch.no_grad():
        difference = (run() - direct()).abs().max().item()
        times = interleaved_rounds({"off": wall_seconds(direct), "on": wall_seconds(run)}, repeats)
    medians = {key: statistics.median(runs) for key, runs in times.items()}
    for key, runs in times.items():
        listed = ", ".join(f"{seconds:.2f}" for seconds in runs)
        print(f"{name}, Winograd {key}: median {medians[key]:.2f} s (runs: {listed})")
    print(f"on / off: {medians['on'] / medians['off']:.3f}; largest output difference {difference:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each form (interleaved)")
    parser.add_argument("--unet", action="store_true", help="time whole SD 1.5 UNet calls instead")
    parser.add_argument("--vae-decode", type=int, metavar="SIZE", help="time whole VAE decodes instead")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, channels_last")
    torch.manual_seed(0)
    if args.unet:
        unet = UNetModel(SD1.unet).eval().to(memory_format=torch.channels_last)
        x = torch.randn(2, 4, 64, 64).contiguous(memory_format=torch.channels_last)
        t, cond = torch.full((2,), 999.0), Conditioning(context=torch.randn(2, 77, 768))
        compare_off_and_on("SD 1.5 UNet, batch 2, 64x64", lambda: unet(x, t, cond), args.repeats)
        return
    if args.vae_decode:
        vae = AutoencoderKL(SD1.vae).eval().to(memory_format=torch.channels_last)
        latents = torch.randn(1, SD1.vae.embed_dim, args.vae_decode // 8, args.vae_decode // 8)
        size = f"{args.vae_decode}x{args.vae_decode}"
        compare_off_and_on(f"SD 1.5 VAE decode {size}", lambda: vae.decode(latents), args.repeats)
        return
    columns = "in | out | input | batch | direct ms | F(2x2) | F(4x4) | lienzo uses | errors"
    print(f"| {columns} |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for in_channels, out_channels, side, batch in CASES:
        results = time_case(in_channels, out_channels, side, batch, args.repeats)
        direct = results["direct"][0]
        conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1, device="meta").requires_grad_(False)
        x = torch.empty(batch, in_channels, side, side).contiguous(memory_format=torch.channels_last)
        tile = winograd.winograd_tile(conv, x)
        chosen = f"F({tile}x{tile})" if tile else "direct"
        ratios = " | ".join(f"{results[name][0] / direct:.2f}" for name in ("F(2x2)", "F(4x4)"))
        errors = ", ".join(f"{error:.1e}" for _, error in results.values())
        shape = f"{in_channels} | {out_channels} | {side}x{side} | {batch}"
        print(f"| {shape} | {direct * 1e3:.1f} | {ratios} | {chosen} | {errors} |")


if __name__ == "__main__":
    main()
