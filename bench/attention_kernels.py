"""Time attention kernels at the SD 1.5 UNet's shapes (bf16, CPU), interleaved, with their error.

Usage: PYTHONPATH=src python bench/attention_kernels.py --repeats 3
Shapes: batch 2, 8 heads, self-attention at 4096x40, 1024x80, 256x160 (tokens x head dim) and
cross-attention of the same queries on 77 keys. Kernels: lienzo's CPU kernel (lienzo.models.cpu_attention,
where the CPU has AVX-512 BF16), SDPA flash and math, flash with the head
dimension zero-padded to a multiple of 64, and chunked GEMM attention (bf16 q k^T, fp32 softmax, bf16
probabilities times v) over query chunks of 256 and 1024. Prints the median time of each and the largest
difference to a float32 reference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lienzo.models import cpu_attention

SHAPES = ((4096, 40), (1024, 80), (256, 160))
CONTEXT_TOKENS = 77


def parse_args() -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each kernel (interleaved)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument(
        "--shape",
        action="append",
        metavar="TOKENS,DIM",
        help="a query length and head dimension to time instead of SD 1.5's (repeatable)",
    )
    parser.add_argument("--kernels", help=f"comma-separated subset of {list(KERNELS)}")
    return parser.parse_args()


def sdpa(backend: SDPBackend) -> Callable:
    """scaled_dot_product_attention restricted to one backend."""

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def padded_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Flash attention on q, k, v zero-padded to a head dimension that is a multiple of 64."""
    dim = q.shape[-1]
    pad = -dim % 64
    q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, scale=dim**-0.5)[..., :dim]


def chunked(chunk: int) -> Callable:
    """GEMM attention over query chunks: bf16 scores, fp32 softmax, bf16 probabilities times v."""

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys = (k * q.shape[-1] ** -0.5).transpose(-1, -2)
        out = torch.empty_like(q)
        for start in range(0, q.shape[-2], chunk):
            scores = torch.matmul(q[..., start : start + chunk, :], keys)
            probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            torch.matmul(probabilities, v, out=out[..., start : start + chunk, :])
        return out

    return run


KERNELS = {
    "lienzo": cpu_attention.attend,
    "flash": sdpa(SDPBackend.FLASH_ATTENTION),
    "math": sdpa(SDPBackend.MATH),
    "flash, head dim padded to 64": padded_flash,
    "chunked GEMM, 256 queries": chunked(256),
    "chunked GEMM, 1024 queries": chunked(1024),
}


def main() -> None:
    """Time every kernel at every shape and print a table."""
    args = parse_args()
    shapes = [tuple(int(n) for n in shape.split(",")) for shape in args.shape] if args.shape else SHAPES
    if args.kernels:
        for name in set(KERNELS) - set(args.kernels.split(",")):
            del KERNELS[name]
    if not cpu_attention.kernel_available():
        print("lienzo's CPU kernel does not apply here (no AVX-512 BF16 or no C compiler): not timed")
        KERNELS.pop("lienzo", None)
    generator = torch.Generator().manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16, batch {args.batch}, "
        f"{args.heads} heads, median of {args.repeats} interleaved calls after one warm-up"
    )
    print()
    print("| queries x head dim | keys | kernel | median | TFLOP/s | max error vs fp32 |")
    print("|---|---|---|---|---|---|")
    with torch.inference_mode():
        for tokens, dim in shapes:
            for keys in (tokens, CONTEXT_TOKENS):
                q = torch.randn(args.batch, args.heads, tokens, dim, generator=generator)
                k = torch.randn(args.batch, args.heads, keys, dim, generator=generator)
                v = torch.randn(args.batch, args.heads, keys, dim, generator=generator)
                reference = F.scaled_dot_product_attention(q, k, v)
                q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
                errors = {
                    name: (kernel(q, k, v).float() - reference).abs().max().item()
                    for name, kernel in KERNELS.items()
                }
                times: dict[str, list[float]] = {name: [] for name in KERNELS}
                for _ in range(args.repeats):
                    for name, kernel in KERNELS.items():
                        start = time.perf_counter()
                        kernel(q, k, v)
                        times[name].append(time.perf_counter() - start)
                flop = 4 * args.batch * args.heads * tokens * keys * dim
                for name, values in times.items():
                    median = statistics.median(values)
                    print(
                        f"| {tokens} x {dim} | {keys} | {name} | {median * 1e3:.2f} ms | "
                        f"{flop / median / 1e12:.3f} | {errors[name]:.4f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
