"""Extract a LoRA from the difference of two models, as kohya's `extract_lora_from_models.py` does.

For each module kohya's LoRA targets (the linear layers and 1x1 convs of the UNet's transformers and the
text encoders' attention and MLP; with a conv rank also the UNet's resnets, down- and upsamplers, 3x3
convs at that rank), dW = W_tuned - W_base is flattened to (out, in*k*k) and factored by SVD,
dW = U S Vh, r = min(rank, out, in*k*k): up = U[:, :r] diag(S[:r]), down = Vh[:r] (Eckart and Young 1936:
the best rank-r approximation), both clamped to +-h with h the `clamp_quantile` quantile of
cat(up, down), and alpha = r (scale 1). The text encoders are left out when no
weight of theirs moved by more than `min_diff`. Keys are kohya's (`lora_unet_…`, `lora_te_…`,
`lora_te1_…`/`lora_te2_…`), written from `lienzo.io.adapter_keys`' names: diffusers module names for SD
1.x/2.x UNets, ldm names for SDXL-style ones, transformers CLIP names for text encoders.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lienzo.errors import InvalidArgumentError
from lienzo.io import write_safetensors
from lienzo.io.adapter_keys import (
    TEXT,
    UNET,
    Component,
    ModuleRef,
    diffusers_unet_names,
    module_names,
    module_table,
    text_prefixes,
    underscored,
)
from lienzo.io.model_files import ModelFiles
from lienzo.models.specs import parse_family
from lienzo.training.merge import check_destination, family_architecture

UNET_KOHYA_PREFIX = "lora_unet_"
TRANSFORMER_BLOCKS = ("attentions",)
CONV_BLOCKS = ("resnets", "downsamplers", "upsamplers")
TEXT_MODULE = re.compile(r"text_model\.encoder\.layers\.\d+\.(self_attn|mlp)\.\w+")
NETWORK_MODULE = "networks.lora"
BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sd2-v": "sd_v2", "sdxl": "sdxl_base_v1-0"}
"""kohya's `ss_base_model_version` by lienzo's base family (absent: not written)."""


@dataclass(frozen=True)
class LoraModule:
    """One module to extract: its kohya key, the network and weight name, and whether it is a k x k conv."""

    key: str
    component: Component
    weight: str
    spatial: bool


def lora_modules(files: ModelFiles, *, conv: bool) -> list[LoraModule]:
    """The modules kohya's LoRA targets on this model, with their kohya keys (checked to resolve back)."""
    spec = files.spec
    unet_shapes = {key: tuple(value.shape) for key, value in files.unet.items()}
    text_shapes = [{key: tuple(value.shape) for key, value in text.items()} for text in files.text_encoders]
    diffusers = diffusers_unet_names(spec.unet, module_names(unet_shapes))
    sgm_names = spec.vector_conditioning is not None
    modules = []
    for module, shape in _weighted_modules(unet_shapes):
        blocks = set(diffusers.get(module, "").split("."))
        if not blocks & set(TRANSFORMER_BLOCKS) and not (conv and blocks & set(CONV_BLOCKS)):
            continue
        name = module if sgm_names else diffusers[module]
        modules.append(LoraModule(UNET_KOHYA_PREFIX + underscored(name), UNET, module, _spatial(shape)))
    for index, (prefixes, shapes) in enumerate(zip(text_prefixes(spec), text_shapes, strict=True)):
        for module, shape in _weighted_modules(shapes):
            if TEXT_MODULE.fullmatch(module) and len(shape) == 2:
                key = prefixes.kohya[0] + underscored(module)
                modules.append(LoraModule(key, (TEXT, index), module, False))
    table = module_table(spec, unet_shapes, text_shapes)
    for item in modules:
        if table.get(item.key) != ModuleRef(item.component, (item.weight,)):
            raise RuntimeError(f"the kohya key {item.key} does not name {item.weight} back; a key-table bug")
    return [LoraModule(m.key, m.component, m.weight + ".weight", m.spatial) for m in modules]


def _weighted_modules(shapes: Mapping[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
    """(module, weight shape) of every linear or conv layer (a weight of 2 or more dimensions)."""
    return [
        (key.removesuffix(".weight"), shape)
        for key, shape in shapes.items()
        if key.endswith(".weight") and len(shape) >= 2
    ]


def _spatial(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and tuple(shape[2:]) != (1, 1)


def extract_lora(
    tuned: ModelFiles,
    base: ModelFiles,
    *,
    rank: int,
    conv_rank: int | None = None,
    clamp_quantile: float | None = 0.99,
    min_diff: float = 0.01,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """A kohya-layout LoRA (float32 `lora_down.weight`, `lora_up.weight`, `alpha` per module) that turns
    `base` into (an approximation of) `tuned`; `clamp_quantile=None` turns clamping off."""
    if rank < 1 or (conv_rank is not None and conv_rank < 1):
        raise InvalidArgumentError("--rank and --conv-rank must be at least 1")
    if clamp_quantile is not None and not 0.0 < clamp_quantile <= 1.0:
        raise InvalidArgumentError(f"the clamp quantile must be in (0, 1], got {clamp_quantile}")
    new, old = parse_family(tuned.family), parse_family(base.family)
    if family_architecture(new.base) != family_architecture(old.base) or new.variant != old.variant:
        raise InvalidArgumentError(
            f"the tuned model ({tuned.family}) and the base model ({base.family}) differ in architecture; "
            "extract a LoRA between two models of one family"
        )
    device = torch.device(device or "cpu")
    states = {
        side: {UNET: files.unet} | {(TEXT, i): text for i, text in enumerate(files.text_encoders)}
        for side, files in (("tuned", tuned), ("base", base))
    }

    def difference(module: LoraModule) -> Tensor:
        new = states["tuned"][module.component].get(module.weight)
        old = states["base"][module.component][module.weight]
        if new is None or new.shape != old.shape:
            raise InvalidArgumentError(
                f"{module.weight} is {'missing' if new is None else tuple(new.shape)} in the tuned model "
                f"but {tuple(old.shape)} in the base; extract between two models of one family and size"
            )
        return new.to(device, torch.float32) - old.to(device, torch.float32)

    modules = lora_modules(base, conv=conv_rank is not None)
    texts = [module for module in modules if module.component != UNET]
    text_moved = any(difference(module).abs().max() > min_diff for module in texts)
    lora: dict[str, Tensor] = {}
    for module in modules:
        if module.component != UNET and not text_moved:
            continue
        wanted = conv_rank if module.spatial and conv_rank is not None else rank
        up, down = svd_factors(difference(module), wanted, clamp_quantile)
        lora[f"{module.key}.lora_up.weight"] = up.cpu()
        lora[f"{module.key}.lora_down.weight"] = down.cpu()
        lora[f"{module.key}.alpha"] = torch.tensor(float(down.shape[0]))
    return lora


def svd_factors(delta: Tensor, rank: int, clamp_quantile: float | None) -> tuple[Tensor, Tensor]:
    """(up, down) with up @ down the best rank-r approximation of `delta` (a linear or conv weight change)
    flattened to (out, in*kh*kw), r = min(rank, out, in*kh*kw) (kohya caps a conv at `in`, short of its
    full rank when in < out); conv factors are (out, r, 1, 1) and (r, in, kh, kw) as kohya writes them."""
    out_dim, in_dim = delta.shape[:2]
    matrix = delta.reshape(out_dim, -1)
    r = min(rank, *matrix.shape)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    up, down = u[:, :r] * s[:r], vh[:r]
    if clamp_quantile is not None:
        high = _quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
        up, down = up.clamp(-high, high), down.clamp(-high, high)
    if delta.dim() == 4:
        return up.reshape(out_dim, r, 1, 1), down.reshape(r, in_dim, *delta.shape[2:])
    return up, down


def _quantile(values: Tensor, q: float) -> Tensor:
    """torch.quantile's linear interpolation, without its limit on the tensor's size."""
    ordered = values.sort().values
    position = q * (ordered.numel() - 1)
    low = int(position)
    high = min(low + 1, ordered.numel() - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def lora_metadata(files: ModelFiles, *, rank: int, conv_rank: int | None) -> dict[str, str]:
    """kohya's `ss_*` metadata of an extracted LoRA (network module, dim and alpha, conv args, base model)."""
    network_args = (
        {} if conv_rank is None else {"conv_dim": str(conv_rank), "conv_alpha": str(float(conv_rank))}
    )
    metadata = {
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(rank)),
        "ss_network_args": json.dumps(network_args),
    }
    base = parse_family(files.family).base
    if base in BASE_MODEL_VERSIONS:
        metadata["ss_base_model_version"] = BASE_MODEL_VERSIONS[base]
        metadata["ss_v2"] = str(base.startswith("sd2"))
    return metadata


def write_lora(
    lora: Mapping[str, Tensor],
    dst: str | os.PathLike,
    *,
    metadata: Mapping[str, str],
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write a LoRA as one `.safetensors` file in `dtype`, atomically."""
    dst = check_destination(dst, overwrite=overwrite)
    write_safetensors(dst, {key: value.to(dtype) for key, value in lora.items()}, metadata)
    return dst
