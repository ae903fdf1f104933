"""Time a matmul, a 3x3 convolution and SDPA in float32, bfloat16 and float16 on this CPU, interleaved.

Usage: PYTHONPATH=src python bench/cpu_dtypes.py [--repeats 5] [--threads 1]
Prints the CPU's half-precision instruction flags, whether lienzo counts each dtype as native
(lienzo.devices.cpu_runs_natively, which decides the SlowPrecisionWarning), and per operation the
median milliseconds, GFLOP/s and the time relative to float32. On a CPU without AMX or AVX-512 BF16/FP16
instructions torch emulates the half types, which is what the warning is about.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from same_weights import interleaved_rounds, wall_seconds

from lienzo.devices import CPU_BF16_FLAGS, CPU_FP16_FLAGS, cpu_flags, cpu_runs_natively

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def operations(dtype: torch.dtype) -> dict[str, tuple[Callable[[], torch.Tensor], float]]:
    """Each operation as a call on fresh inputs of `dtype` and its FLOP count."""
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype)

    a, b = tensor(512, 512), tensor(512, 512)
    image, kernel = tensor(1, 64, 32, 32), tensor(64, 64, 3, 3)
    q, k, v = tensor(1, 8, 1024, 40), tensor(1, 8, 1024, 40), tensor(1, 8, 1024, 40)
    return {
        "matmul 512x512x512": (lambda: a @ b, 2 * 512**3),
        "conv 3x3, 64 -> 64 channels, 32x32": (
            lambda: F.conv2d(image, kernel, padding=1),
            2 * 64 * 64 * 9 * 32 * 32,
        ),
        "SDPA 8 heads x 1024 tokens x 40": (
            lambda: F.scaled_dot_product_attention(q, k, v),
            4 * 8 * 1024 * 1024 * 40,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each case (interleaved)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = sorted(flag for flag in cpu_flags() if flag in CPU_BF16_FLAGS + CPU_FP16_FLAGS)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, half-precision flags: {flags or 'none'}")
    cases = {dtype: operations(dtype) for dtype in DTYPES}
    runs = {
        (name, dtype): wall_seconds(call) for dtype, ops in cases.items() for name, (call, _) in ops.items()
    }
    with torch.no_grad():
        times = {case: seconds[1:] for case, seconds in interleaved_rounds(runs, args.repeats + 1).items()}
    print("| operation | dtype | native | median ms | GFLOP/s | time / float32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (_, flop) in cases[torch.float32].items():
        reference = statistics.median(times[(name, torch.float32)])
        for dtype in DTYPES:
            median = statistics.median(times[(name, dtype)])
            native = "yes" if cpu_runs_natively(dtype) else "no"
            print(
                f"| {name} | {str(dtype).removeprefix('torch.')} | {native} | {median * 1e3:.2f} | "
                f"{flop / median / 1e9:.1f} | {median / reference:.1f} |"
            )


if __name__ == "__main__":
    main()
