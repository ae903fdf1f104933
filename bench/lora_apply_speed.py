"""Time applying a rank-32 LoRA to an SD 1.5-size UNet and text encoder, and changing its strength.

Usage: PYTHONPATH=src python bench/lora_apply_speed.py [--rank 32] [--dtype bf16]
Builds SD 1.5-architecture networks with random weights (no download), writes a kohya-layout LoRA on
every attention, feed-forward and projection layer of the UNet's transformers and of the text encoder
(as kohya's default LoRA targets), then times, on the Pipeline: the first `pipe.loras.add` (read the
file, resolve its keys, compute and cast every patched weight), a second `add` of the same file (cached:
no read), `set_strength` (recompute from memory) and `remove` (originals back).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from lienzo.devices import DTYPES
from lienzo.models.clip import CLIPTextModel
from lienzo.models.specs import SD1
from lienzo.models.unet import UNetModel
from lienzo.models.vae import AutoencoderKL
from lienzo.pipelines.pipeline import Pipeline
from lienzo.text.tokenizer import CLIPTokenizer

TARGETS = ("attn1", "attn2", "ff.net", "proj_in", "proj_out", "self_attn", "mlp")


def lora_tensors(prefix: str, module: torch.nn.Module, rank: int) -> dict[str, torch.Tensor]:
    """kohya keys (`prefix` + module name with `.` -> `_`) for every targeted linear or 1x1 conv."""
    tensors = {}
    for name, layer in module.named_modules():
        if not isinstance(layer, torch.nn.Linear | torch.nn.Conv2d) or not any(t in name for t in TARGETS):
            continue
        out_features, in_features = layer.weight.shape[:2]
        key = f"{prefix}_{name.replace('.', '_')}"
        kernel = layer.weight.shape[2:]
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_features, *kernel).half() * 0.01
        tensors[f"{key}.lora_up.weight"] = torch.randn(out_features, rank, *([1] * len(kernel))).half() * 0.01
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    return tensors


def timed(label: str, action) -> None:
    start = time.perf_counter()
    action()
    print(f"  {label}: {time.perf_counter() - start:.3f} s")


def main() -> None:
    """Build the networks and the file, then time the four operations."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    unet = UNetModel(SD1.unet).to(dtype).eval().requires_grad_(False)
    text = CLIPTextModel(SD1.text_encoders[0].config).to(dtype).eval().requires_grad_(False)
    vae = AutoencoderKL(SD1.vae).to(dtype).eval().requires_grad_(False)
    pipe = Pipeline(SD1, unet, vae, [text], [CLIPTokenizer.from_bundled()])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.safetensors"
        tensors = {**lora_tensors("lora_unet", unet, args.rank), **lora_tensors("lora_te", text, args.rank)}
        save_file(tensors, path)
        modules = len(tensors) // 3
        print(
            f"rank {args.rank}, {modules} modules, {path.stat().st_size / 2**20:.0f} MiB, {dtype}, "
            f"{torch.get_num_threads()} threads"
        )
        timed("first add (read, resolve, patch)", lambda: pipe.loras.add(path, 0.8))
        timed("set_strength", lambda: pipe.loras.set_strength("bench", 0.5))
        timed("remove", lambda: pipe.loras.remove("bench"))
        timed("add again (cached file)", lambda: pipe.loras.add(path, 0.8))


if __name__ == "__main__":
    main()
