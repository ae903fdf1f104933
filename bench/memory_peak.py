"""Peak resident memory of txt2img: SD 1.5 at 512x512 and SDXL at 1024x1024, whole and tiled VAE.

Usage: PYTHONPATH=src python bench/memory_peak.py [--cases sd1-512 sdxl-1024 sdxl-1024-tiled]
                                                 [--no-weight-packing]
Each case runs in its own process: random weights of the family's reference architecture made directly
in bfloat16 (no float32 copy), one Pipeline, one txt2img call (prompt and negative, CFG 7, Euler, a few
steps: the activations of a step do not accumulate, so the peak of one step is the peak of many),
VAE decode. The child reports its resident memory once the pipeline is built (after handing freed heap
back with glibc's malloc_trim), its peak during the txt2img call alone (VmHWM after resetting it with
/proc/self/clear_refs) and its peak over its whole life (ru_maxrss, building the weights included).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lienzo.io.model_files import ModelFiles
from lienzo.models.clip import CLIPTextModel
from lienzo.models.packed_conv import set_weight_packing
from lienzo.models.specs import SD1, SDXL, FamilySpec
from lienzo.models.unet import UNetModel
from lienzo.models.vae import AutoencoderKL
from lienzo.pipelines.pipeline import pipeline_from_files


@dataclass(frozen=True)
class Case:
    """One measured txt2img call."""

    spec: FamilySpec
    size: int
    steps: int
    vae_tiling: bool


CASES = {
    "sd1-512": Case(SD1, 512, 2, False),
    "sdxl-1024": Case(SDXL, 1024, 1, False),
    "sdxl-1024-tiled": Case(SDXL, 1024, 1, True),
}


def parse_args() -> argparse.Namespace:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--child", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-weight-packing", action="store_true", help="no packed convolution weights (set_weight_packing)"
    )
    return parser.parse_args()


def random_weights(module_class: type, config) -> dict[str, torch.Tensor]:
    """A state dict of the network's shapes with small random bf16 values, made without a float32 copy."""
    with torch.device("meta"):
        shapes = module_class(config).state_dict()
    generator = torch.Generator().manual_seed(0)
    return {
        name: (torch.randn(tensor.shape, generator=generator) * 0.02).to(torch.bfloat16)
        if tensor.is_floating_point()
        else torch.zeros(tensor.shape, dtype=tensor.dtype)
        for name, tensor in shapes.items()
    }


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status in MiB: VmRSS (resident now) or VmHWM (peak since start or
    the last clear_refs reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line; this benchmark needs Linux")


def run_child(name: str) -> None:
    """Build the case's pipeline, run one txt2img call and print the measurements as JSON."""
    case = CASES[name]
    spec = case.spec
    files = ModelFiles(
        spec=spec,
        unet=random_weights(UNetModel, spec.unet),
        vae=random_weights(AutoencoderKL, spec.vae),
        text_encoders=[random_weights(CLIPTextModel, tower.config) for tower in spec.text_encoders],
        tokenizer_folders=[None] * len(spec.text_encoders),
        source_format="random",
    )
    pipe = pipeline_from_files(files, device="cpu", dtype=torch.bfloat16, name=name)
    del files
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    loaded_mib = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    pipe.generate(
        "a red circle above a blue square",
        negative_prompt="blurry",
        width=case.size,
        height=case.size,
        steps=case.steps,
        cfg=7.0,
        sampler="euler",
        seed=1,
        vae_tiling=case.vae_tiling,
        progress=False,
    )
    seconds = time.perf_counter() - start
    report = {
        "case": name,
        "resident_after_loading_mib": loaded_mib,
        "peak_during_call_mib": status_mib("VmHWM"),
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "seconds": seconds,
    }
    print(json.dumps(report))


def main() -> None:
    """Run each case in a subprocess and print a table."""
    args = parse_args()
    if args.child:
        set_weight_packing(not args.no_weight_packing)
        run_child(args.child)
        return
    packing = "off" if args.no_weight_packing else "on"
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, bf16, CPU, {threads} threads, weight packing {packing}")
    print(
        "| case | size | steps | VAE tiling | resident after loading | peak during the call | "
        "ru_maxrss (whole life) | call time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.cases:
        completed = subprocess.run(
            [sys.executable, __file__, "--child", name, *(["--no-weight-packing"] * args.no_weight_packing)],
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode:
            last = completed.stderr.strip().splitlines()[-1:]
            print(f"| {name} | failed with exit status {completed.returncode} {last} |", flush=True)
            continue
        report = json.loads(completed.stdout.strip().splitlines()[-1])
        case = CASES[name]
        print(
            f"| {name} | {case.size}x{case.size} | {case.steps} | {'on' if case.vae_tiling else 'off'} | "
            f"{report['resident_after_loading_mib'] / 1024:.2f} GiB | "
            f"{report['peak_during_call_mib'] / 1024:.2f} GiB | "
            f"{report['ru_maxrss_mib'] / 1024:.2f} GiB | {report['seconds']:.0f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
