"""Time one SD 1.5-architecture UNet forward in lienzo and in diffusers, same weights, same run.

Usage: PYTHONPATH=src python bench/unet_speed.py --repeats 5
Prints the median time of each and the ratio lienzo / diffusers (lower is better for lienzo), also as
the median of per-repeat ratios, which is robust to load that other processes put on a shared machine.
Where lienzo's CPU attention kernel applies (bf16, AVX-512 BF16), lienzo also runs with PyTorch's
attention kernel (`--no-cpu-attention`), interleaved with the other two, to show the kernel's share.
`--compile` compiles lienzo's UNet (`pipe.compile()`'s path) and prints the first call's time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from same_weights import same_weight_unets

from lienzo.models import cpu_attention
from lienzo.models.conditioning import Conditioning
from lienzo.models.specs import SD1
from lienzo.pipelines.compiling import compile_unet


def parse_args() -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each model (interleaved)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each model first")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--latent-size", type=int, default=64)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--compile", action="store_true", help="torch.compile lienzo's UNet (inductor)")
    return parser.parse_args()


def timed(run) -> float:
    """Seconds one call of `run` takes."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    """Warm up, then time both models alternately and print medians and their ratio."""
    args = parse_args()
    dtype = getattr(torch, args.dtype)
    ours, reference = same_weight_unets(SD1.unet, device="cpu", dtype=dtype)
    generator = torch.Generator().manual_seed(1)
    size = args.latent_size
    x = torch.randn(args.batch, 4, size, size, generator=generator).to(
        dtype, memory_format=torch.channels_last
    )
    t = torch.full((args.batch,), 999.0)
    context = torch.randn(args.batch, 77, 768, generator=generator).to(dtype)

    def run_ours() -> torch.Tensor:
        return ours(x, t, Conditioning(context=context))

    def run_reference() -> torch.Tensor:
        return reference(x, t, context).sample

    def run_ours_sdpa() -> torch.Tensor:
        cpu_attention.set_cpu_attention(False)
        try:
            return run_ours()
        finally:
            cpu_attention.set_cpu_attention(True)

    timer = compile_unet(ours) if args.compile else None
    with torch.inference_mode():
        difference = (run_ours().float() - run_reference().float()).abs().max().item()
        order = [("lienzo", run_ours), ("diffusers", run_reference)]
        if dtype == torch.bfloat16 and cpu_attention.kernel_available():
            order.append(("lienzo, PyTorch attention", run_ours_sdpa))
        for _ in range(args.warmup):
            for _, run in order:
                run()
        times: dict[str, list[float]] = {name: [] for name, _ in order}
        for repeat in range(args.repeats):
            for name, run in order if repeat % 2 == 0 else reversed(order):
                times[name].append(timed(run))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, channels_last, "
        f"batch {args.batch}, latent 4x{size}x{size}, context 77x768, {args.repeats} repeats"
    )
    print(f"max |lienzo - diffusers| output difference: {difference:.4g}")
    if timer is not None:
        print(f"lienzo compiled: first call (compiling) {timer.first_call_seconds:.1f} s")
    for name, values in times.items():
        runs = ", ".join(f"{value:.3f}" for value in values)
        print(f"{name:>9}: median {medians[name]:.3f} s  (runs: {runs})")
    paired = [ours / reference for ours, reference in zip(times["lienzo"], times["diffusers"], strict=True)]
    print(f"ratio lienzo/diffusers (medians): {medians['lienzo'] / medians['diffusers']:.3f}")
    print(f"ratio lienzo/diffusers (median of per-repeat pairs): {statistics.median(paired):.3f}")
    if "lienzo, PyTorch attention" in medians:
        before = medians["lienzo, PyTorch attention"]
        print(f"ratio lienzo with PyTorch attention/diffusers (medians): {before / medians['diffusers']:.3f}")


if __name__ == "__main__":
    main()
