"""Every name an adapter file may give each of lienzo's modules, built from the model's own parameter names.

Trainers name the module they change in their own convention:
- kohya / A1111 / LyCORIS: a prefix and the module path with "." replaced by "_"
  (`lora_unet_down_blocks_0_attentions_0_proj_in`, `lora_te_text_model_encoder_layers_0_mlp_fc1`);
  SD 1.x/2.x UNets under diffusers names, SDXL under ldm/SGM ones (`lora_unet_input_blocks_4_1_proj_in`);
  text encoders under transformers CLIP names, `lora_te_` for one tower, `lora_te1_`/`lora_te2_` for SDXL.
- diffusers / PEFT: `unet.` + the dotted diffusers name, `text_encoder.` / `text_encoder_2.` + the dotted
  transformers name (with or without `text_model.`); old files leave `unet.` out.
- OpenCLIP text names (`model_transformer_resblocks_0_attn_in_proj`, `..._mlp_c_fc`), where `in_proj` is
  q, k and v fused, so one adapter module covers three of lienzo's (concatenated along dim 0).
- ComfyUI: `diffusion_model.` + the dotted ldm name.

Underscore names are ambiguous (module names hold underscores), so names are never split: `module_table`
lists every lienzo module (every parameter name ending in `.weight`), writes each of its names in each
convention, and a file's module key is looked up in that table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lienzo.io.keymaps.clip import OPENCLIP_BLOCK, QKV
from lienzo.io.keymaps.unet import RESNET_LDM_TO_DIFFUSERS, BlockLayout, block_prefix_pairs
from lienzo.models.specs import FamilySpec
from lienzo.models.unet import UNetConfig

UNET = "unet"
TEXT = "text"
Component = str | tuple[str, int]
"""Which network a module belongs to: "unet", or ("text", i) for the i-th text encoder of the spec."""

Shapes = Mapping[str, tuple[int, ...]]

UNET_KOHYA_PREFIXES = ("lora_unet_", "lycoris_")
UNET_DOTTED_PREFIXES = ("unet.", "diffusion_model.", "")
HF_ROOT = "text_model."
HF_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)")
OPENCLIP_ROOTS = ("transformer.resblocks.{}.", "model.transformer.resblocks.{}.")


@dataclass(frozen=True)
class ModuleRef:
    """A lienzo module (or several fused into one, e.g. q, k, v for OpenCLIP's in_proj) in a component."""

    component: Component
    modules: tuple[str, ...]


@dataclass(frozen=True)
class TextPrefixes:
    """The key prefixes an adapter file uses for one text encoder (kohya style and dotted style)."""

    kohya: tuple[str, ...]
    dotted: tuple[str, ...]


AMBIGUOUS = ModuleRef(UNET, ())
"""Marks a name that two different modules go by (looked up, it is an error rather than a guess)."""


def underscored(name: str) -> str:
    """kohya's spelling of a module path: "." replaced by "_"."""
    return name.replace(".", "_")


def module_names(shapes: Shapes) -> list[str]:
    """The modules of a network: every parameter name ending in `.weight`, without it."""
    return [name.removesuffix(".weight") for name in shapes if name.endswith(".weight")]


def diffusers_unet_names(config: UNetConfig, modules: Sequence[str]) -> dict[str, str]:
    """The diffusers name of each ldm UNet module name that has one (from the config's block layout)."""
    pairs = sorted(block_prefix_pairs(BlockLayout.of_config(config)), key=lambda pair: -len(pair[0]))
    names = {}
    for module in modules:
        dotted = module + "."
        for ldm, diffusers, is_resnet in pairs:
            if not dotted.startswith(ldm):
                continue
            rest = dotted[len(ldm) :]
            if is_resnet:
                inner = next((old for old in RESNET_LDM_TO_DIFFUSERS if rest.startswith(old)), None)
                if inner is None:
                    break
                rest = RESNET_LDM_TO_DIFFUSERS[inner] + rest[len(inner) :]
            names[module] = (diffusers + rest).removesuffix(".")
            break
    return names


def text_prefixes(spec: FamilySpec) -> list[TextPrefixes]:
    """Each text encoder's key prefixes: SDXL's second (pooled) tower is diffusers' `text_encoder_2` and
    kohya's `lora_te2_`; a lone first tower is `lora_te_`, the first of two `lora_te1_`."""
    towers = spec.text_encoders
    prefixes = []
    for tower in towers:
        if tower.pooled and spec.vector_conditioning is not None:
            prefixes.append(TextPrefixes(("lora_te2_",), ("text_encoder_2.",)))
        elif len(towers) == 1:
            prefixes.append(TextPrefixes(("lora_te_",), ("text_encoder.", "")))
        else:
            prefixes.append(TextPrefixes(("lora_te1_",), ("text_encoder.",)))
    return prefixes


def _add(table: dict[str, ModuleRef], alias: str, ref: ModuleRef) -> None:
    known = table.get(alias)
    table[alias] = ref if known is None or known == ref else AMBIGUOUS


def unet_table(config: UNetConfig, shapes: Shapes) -> dict[str, ModuleRef]:
    """Every name of every UNet module: ldm and diffusers, kohya and dotted spellings."""
    modules = module_names(shapes)
    diffusers = diffusers_unet_names(config, modules)
    table: dict[str, ModuleRef] = {}
    for module in modules:
        ref = ModuleRef(UNET, (module,))
        for name in {module, diffusers.get(module, module)}:
            for prefix in UNET_KOHYA_PREFIXES:
                _add(table, prefix + underscored(name), ref)
            for prefix in UNET_DOTTED_PREFIXES:
                _add(table, prefix + name, ref)
    return table


def _openclip_names(module: str) -> list[str]:
    """OpenCLIP's names for a transformers CLIP layer module (empty for modules it names otherwise)."""
    match = HF_LAYER.fullmatch(module)
    if match is None:
        return []
    index, inner = match.groups()
    openclip = {hf: name for name, hf in OPENCLIP_BLOCK.items()}.get(inner)
    return [] if openclip is None else [root.format(index) + openclip for root in OPENCLIP_ROOTS]


def text_table(index: int, prefixes: TextPrefixes, shapes: Shapes) -> dict[str, ModuleRef]:
    """Every name of every module of text encoder `index`: transformers and OpenCLIP names (OpenCLIP's
    fused `attn.in_proj` covering q, k and v), kohya and dotted spellings."""
    component = (TEXT, index)
    modules = module_names(shapes)
    names: list[tuple[str, ModuleRef]] = []
    for module in modules:
        ref = ModuleRef(component, (module,))
        names.append((module, ref))
        if module.startswith(HF_ROOT):
            names.append((module.removeprefix(HF_ROOT), ref))
        names.extend((name, ref) for name in _openclip_names(module))
    present = set(modules)
    layers = {match.group(1) for module in modules if (match := HF_LAYER.fullmatch(module))}
    for layer in sorted(layers):
        fused = tuple(f"{HF_ROOT}encoder.layers.{layer}.self_attn.{name}" for name in QKV)
        if set(fused) <= present:
            ref = ModuleRef(component, fused)
            names.extend((root.format(layer) + "attn.in_proj", ref) for root in OPENCLIP_ROOTS)
    table: dict[str, ModuleRef] = {}
    for name, ref in names:
        for prefix in prefixes.kohya:
            _add(table, prefix + underscored(name), ref)
        for prefix in prefixes.dotted:
            _add(table, prefix + name, ref)
    return table


def module_table(
    spec: FamilySpec, unet_shapes: Shapes, text_encoder_shapes: Sequence[Shapes]
) -> dict[str, ModuleRef]:
    """Every module name an adapter file may use for this model, mapped to the lienzo module(s) it means."""
    table = unet_table(spec.unet, unet_shapes)
    for index, (prefixes, shapes) in enumerate(zip(text_prefixes(spec), text_encoder_shapes, strict=True)):
        for alias, ref in text_table(index, prefixes, shapes).items():
            _add(table, alias, ref)
    return table
