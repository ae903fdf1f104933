"""Where one SD 1.5-architecture UNet forward spends its time, by op type, against the matmul peak.

Usage: PYTHONPATH=src python bench/unet_profile.py
Runs torch.profiler over one UNet forward (random weights, batch 2, latent 4x64x64, context 77x768,
bf16, channels_last, inference mode) after a warm-up, groups the ops' own CPU time by type and prints,
per type, the time, its share, the FLOP it performs and the achieved FLOP/s as a fraction of the bf16
matmul peak measured in the same run (a square bf16 matmul, best of several). Attention is PyTorch's
SDPA or, where it applies, lienzo's CPU kernel (lienzo.models.cpu_attention; `--no-cpu-attention` for
SDPA everywhere).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from lienzo.models import cpu_attention
from lienzo.models.conditioning import Conditioning
from lienzo.models.specs import SD1
from lienzo.models.unet import UNetModel

CATEGORIES = (
    ("attention", ("scaled_dot_product", "flash_attention", "lienzo::cpu_attention")),
    ("convolution", ("convolution",)),
    ("linear / matmul", ("addmm", "aten::mm", "aten::bmm", "aten::baddbmm")),
    ("group norm", ("group_norm",)),
    ("layer norm", ("layer_norm",)),
    ("activation (SiLU, GELU)", ("silu", "gelu")),
    ("elementwise (add, mul)", ("aten::add", "aten::mul")),
    ("copy / layout", ("copy_", "clone", "contiguous", "_to_copy", "cat", "upsample")),
)


def parse_args() -> argparse.Namespace:
    """Command-line options of the profile."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--latent-size", type=int, default=64)
    parser.add_argument("--top", type=int, default=0, help="also print the N ops with most own time")
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the peak-measuring matmul")
    parser.add_argument("--no-cpu-attention", action="store_true", help="SDPA for every attention")
    return parser.parse_args()


def matmul_peak(size: int) -> float:
    """FLOP/s of the best of five square bf16 matmuls of side `size`."""
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    a @ b
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def category(name: str) -> str:
    """The op type an aten op's name belongs to."""
    for label, keys in CATEGORIES:
        if any(key in name for key in keys):
            return label
    return "other"


def attention_flop(shapes: list) -> int:
    """FLOP of softmax(q k^T) v: two matrix products of 2 b h l_q l_k d each."""
    q, k = shapes[0], shapes[1]
    return 4 * math.prod(q[:-1]) * k[-2] * q[-1]


def matmul_flop(name: str, shapes: list) -> int:
    """FLOP of mm / addmm / bmm / baddbmm from the operand shapes."""
    if name in ("aten::addmm", "aten::baddbmm"):
        a, b = shapes[1], shapes[2]
    else:
        a, b = shapes[0], shapes[1]
    if len(a) < 2 or len(b) < 2:
        return 0
    return 2 * math.prod(a) * b[-1]


def counting_attend(counter: list[int]):
    """cpu_attention.attend that adds each call's FLOP to counter[0] (the profiler sees no shapes)."""
    attend = cpu_attention.attend

    def counted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        counter[0] += attention_flop([q.shape, k.shape])
        return attend(q, k, v)

    return counted


def count_convolution_flop(model: torch.nn.Module, counter: list[int]) -> None:
    """Forward hooks adding each convolution's 2 N C_out H_out W_out C_in/groups k_h k_w to counter[0]
    (packed convolutions call oneDNN directly, so the profiler's aten::convolution shapes miss them)."""

    def hook(conv: torch.nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
        per_output = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
        counter[0] += 2 * output.numel() * per_output

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(hook)


def main() -> None:
    """Profile one forward and print the table."""
    args = parse_args()
    cpu_attention.set_cpu_attention(not args.no_cpu_attention)
    kernel_flop, convolution_flop = [0], [0]
    cpu_attention.attend = counting_attend(kernel_flop)
    torch.manual_seed(0)
    model = UNetModel(SD1.unet).eval().to(torch.bfloat16, memory_format=torch.channels_last)
    size = args.latent_size
    x = torch.randn(args.batch, 4, size, size).to(torch.bfloat16, memory_format=torch.channels_last)
    t = torch.full((args.batch,), 999.0)
    context = Conditioning(context=torch.randn(args.batch, 77, 768).to(torch.bfloat16))
    with torch.inference_mode():
        peak = matmul_peak(args.matmul_size)
        model(x, t, context)
        start = time.perf_counter()
        kernel_flop[0] = 0
        count_convolution_flop(model, convolution_flop)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(x, t, context)
        wall = time.perf_counter() - start
        peak_after = matmul_peak(args.matmul_size)
    seconds: dict[str, float] = defaultdict(float)
    flop: dict[str, int] = defaultdict(int, {"attention": kernel_flop[0], "convolution": convolution_flop[0]})
    for event in prof.key_averages(group_by_input_shape=True):
        label = category(event.key)
        seconds[label] += event.self_cpu_time_total / 1e6
        if label == "attention" and "for_cpu" in event.key and event.input_shapes:
            flop[label] += attention_flop(event.input_shapes) * event.count
        if label == "linear / matmul" and event.input_shapes:
            flop[label] += matmul_flop(event.key, event.input_shapes) * event.count
    total = sum(seconds.values())
    peak = max(peak, peak_after)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16, channels_last, "
        f"batch {args.batch}, latent 4x{size}x{size}, context 77x768; forward under the profiler {wall:.2f} s"
    )
    print(f"bf16 matmul peak ({args.matmul_size}^3, best of 5, before and after): {peak / 1e12:.3f} TFLOP/s")
    print()
    print("| op type | time | share | GFLOP | achieved TFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|")
    for label, value in sorted(seconds.items(), key=lambda item: -item[1]):
        work = flop.get(label, 0)
        rate = work / value if value and work else 0.0
        rate_text = f"{rate / 1e12:.3f}" if work else "-"
        share_of_peak = f"{100 * rate / peak:.0f} %" if work else "-"
        print(
            f"| {label} | {value:.3f} s | {100 * value / total:.1f} % | "
            f"{work / 1e9:.1f} | {rate_text} | {share_of_peak} |"
        )
    print(f"| total | {total:.3f} s | 100 % | {sum(flop.values()) / 1e9:.1f} | | |")
    if args.top:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
