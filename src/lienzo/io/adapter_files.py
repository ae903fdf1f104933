"""Adapter files (LoRA, LyCORIS, DoRA; kohya, A1111, diffusers and PEFT layouts): read, then resolve onto
lienzo's modules.

`read_adapter_file` groups a file's tensors by the module they change, under the file's own module key,
with part names in one vocabulary (kohya's: `lora_down.weight`, `lora_up.weight`, `alpha`, `dora_scale`,
LyCORIS' `hada_w1_a`, `lokr_w1`, `diff`, ...). diffusers/PEFT parts are renamed into it (`lora_A.weight`
-> `lora_down.weight`, `lora_B.weight` -> `lora_up.weight`, `lora_magnitude_vector` -> `dora_scale`), and
their alphas, which PEFT keeps in the `lora_adapter_metadata` header (lora_alpha, alpha_pattern,
use_rslora), become an `alpha` part; without one there is no alpha (scale 1). Legacy diffusers keys
(`attn1.processor.to_q_lora.down.weight`, `to_out_lora`, `lora_linear_layer`, `lora.down`) become the
module they change.

`resolve_targets` maps every module key onto lienzo parameter names through the table of every name each
module goes by (see `adapter_keys`), checks that the parts' shapes fit, and refuses, in one line, a file
with modules that match nothing or do not fit, naming the family the file looks made for.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lienzo.errors import CorruptCheckpointError, InvalidArgumentError
from lienzo.io.adapter_keys import AMBIGUOUS, TEXT, UNET, Component, Shapes, module_table
from lienzo.io.formats import SAFETENSORS_SUFFIXES, read_safetensors_metadata, read_state_dict
from lienzo.models.specs import BASE_FAMILIES, FamilySpec, parse_family

KOHYA_ROOTS = ("lora_", "lycoris_")
EMBEDDING_ROOT = "bundle_emb."
PEFT_MODEL_ROOT = "base_model.model."
METADATA_KEY = "lora_adapter_metadata"
DOTTED_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
DOTTED_PARTS = (
    ("lora_linear_layer.down.weight", "lora_down.weight"),
    ("lora_linear_layer.up.weight", "lora_up.weight"),
    ("lora.down.weight", "lora_down.weight"),
    ("lora.up.weight", "lora_up.weight"),
    ("lora_A.weight", "lora_down.weight"),
    ("lora_B.weight", "lora_up.weight"),
    ("lora_B.bias", "lora_up.bias"),
    ("lora_magnitude_vector", "dora_scale"),
    *(
        (part, part)
        for part in (
            "lora_down.weight",
            "lora_up.weight",
            "lora_mid.weight",
            "a1.weight",
            "a2.weight",
            "b1.weight",
            "b2.weight",
            "bm.weight",
        )
    ),
)
"""(key suffix, part) for dotted module keys, whose parts may span two segments; else the last segment."""
LEGACY_ATTENTION = re.compile(
    r"(?P<module>.+?)(?:\.processor)?\.(?P<projection>to_q|to_k|to_v|to_out)_lora\.(?P<kind>down|up)\.weight"
)
LEGACY_PROJECTIONS = {
    UNET: {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    TEXT: {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}
EXAMPLES = 3


@dataclass
class AdapterFile:
    """An adapter file's tensors: `modules` by the file's module key, each a dict of parts (e.g.
    {"lora_down.weight", "lora_up.weight", "alpha"}); `embeddings` bundled with it by name (e.g.
    {"string_to_param.*"} or {"clip_l", "clip_g"}); `metadata` the safetensors header (ss_*, ...);
    `source` names the file in messages."""

    modules: dict[str, dict[str, Tensor]]
    embeddings: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = "the adapter"


@dataclass(frozen=True)
class Target:
    """Where one file module lands: `component` ("unet" or ("text", i)), `params` mapping a parameter
    suffix ("weight", "bias") to the lienzo parameter names it covers (several, concatenated along dim 0,
    for a fused OpenCLIP in_proj over q, k, v), `weight_shape` the shape of the weight so concatenated,
    and `parts` the module's tensors."""

    key: str
    component: Component
    params: dict[str, tuple[str, ...]]
    weight_shape: tuple[int, ...]
    parts: dict[str, Tensor]


@dataclass
class Resolution:
    """Every module of an adapter file placed on the model, and the embeddings bundled with it."""

    targets: list[Target]
    embeddings: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def for_component(self, component: Component) -> list[Target]:
        """The targets in one network ("unet" or ("text", i))."""
        return [target for target in self.targets if target.component == component]


def read_adapter_file(path: str | os.PathLike) -> AdapterFile:
    """Read a LoRA/LyCORIS file (`.safetensors`, or a weights-only `.pt`/`.ckpt`) grouped by module."""
    path = Path(path)
    tensors = read_state_dict(path)
    metadata = read_safetensors_metadata(path) if path.suffix.lower() in SAFETENSORS_SUFFIXES else {}
    if not tensors:
        raise InvalidArgumentError(f"{path} holds no tensors; give a LoRA or LyCORIS file")
    return group_adapter_tensors(tensors, metadata, source=str(path))


def group_adapter_tensors(
    tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None, source: str = "the adapter"
) -> AdapterFile:
    """Group an adapter state dict by module (see `read_adapter_file`); PEFT alphas come from `metadata`."""
    metadata = dict(metadata or {})
    modules: dict[str, dict[str, Tensor]] = {}
    embeddings: dict[str, dict[str, Tensor]] = {}
    peft_modules: set[str] = set()
    for key, tensor in tensors.items():
        if key.startswith(EMBEDDING_ROOT) and key.count(".") >= 2:
            _, name, rest = key.split(".", 2)
            embeddings.setdefault(name, {})[rest] = tensor
            continue
        module, part, renamed = _split_key(key)
        parts = modules.setdefault(module, {})
        if part in parts:
            raise CorruptCheckpointError(
                f"{source} holds two tensors for part {part!r} of module {module!r} (one is {key!r}); "
                "re-export the adapter in one layout"
            )
        parts[part] = tensor
        if renamed:
            peft_modules.add(module)
    _add_peft_alphas(modules, peft_modules, _peft_config(metadata, source))
    return AdapterFile(modules, embeddings, metadata, source)


def _split_key(key: str) -> tuple[str, str, bool]:
    """(module key, part, whether the part was renamed from a diffusers/PEFT layout)."""
    key = key.removeprefix(PEFT_MODEL_ROOT)
    if key.startswith(KOHYA_ROOTS):
        module, _, part = key.partition(".")
        return module, part, False
    if match := LEGACY_ATTENTION.fullmatch(key):
        module = match["module"]
        kind = TEXT if module.endswith("self_attn") else UNET
        projection = LEGACY_PROJECTIONS[kind][match["projection"]]
        return f"{module}.{projection}", f"lora_{match['kind']}.weight", True
    for suffix, part in DOTTED_PARTS:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], part, suffix != part
    module, _, part = key.rpartition(".")
    return (module, part, False) if module else (key, "", False)


def _peft_config(metadata: Mapping[str, str], source: str) -> dict[str, dict]:
    """PEFT LoraConfig fields by component ("unet", "text_encoder", ..., or "" for every component)."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        config = None
    if not isinstance(config, dict):
        raise CorruptCheckpointError(
            f"{source}: its {METADATA_KEY} header is not a JSON object; re-export the adapter"
        )
    by_component: dict[str, dict] = {}
    for component in DOTTED_COMPONENTS:
        prefix = component + "."
        fields = {key[len(prefix) :]: value for key, value in config.items() if key.startswith(prefix)}
        if fields:
            by_component[component] = fields
    if not by_component:
        by_component[""] = config
    return by_component


def _pattern_value(patterns: Mapping[str, float], module: str) -> float | None:
    """PEFT's alpha_pattern lookup: a key matches a module name it ends (at a "." boundary)."""
    for pattern, value in patterns.items():
        try:
            matched = re.fullmatch(rf"(?:.*\.)?(?:{pattern})", module) is not None
        except re.error:
            matched = module == pattern or module.endswith("." + pattern)
        if matched:
            return value
    return None


def _add_peft_alphas(
    modules: dict[str, dict[str, Tensor]], peft_modules: set[str], configs: dict[str, dict]
) -> None:
    """An `alpha` part from the PEFT config: alpha_pattern, else lora_alpha; rsLoRA's alpha/sqrt(r)
    scale is stored as alpha*sqrt(r) so that alpha/rank gives it. Without a config: no alpha (scale 1)."""
    for module in peft_modules:
        parts = modules[module]
        if "alpha" in parts or "lora_down.weight" not in parts:
            continue
        root, _, relative = module.partition(".")
        config = configs.get(root) if root in DOTTED_COMPONENTS else None
        if config is None:
            config, relative = configs.get(""), module
        if config is None:
            continue
        alpha = _pattern_value(config.get("alpha_pattern") or {}, relative)
        alpha = config.get("lora_alpha") if alpha is None else alpha
        if alpha is None:
            continue
        rank = parts["lora_down.weight"].shape[0]
        if config.get("use_rslora"):
            alpha = alpha * math.sqrt(rank)
        parts["alpha"] = torch.tensor(float(alpha))


def parameter_shapes(module: nn.Module) -> dict[str, torch.Size]:
    """Parameter name -> shape of a network, as `resolve_targets` takes it."""
    return {name: param.shape for name, param in module.named_parameters(remove_duplicate=False)}


def resolve_targets(
    adapter: AdapterFile,
    spec: FamilySpec,
    unet_shapes: Shapes,
    text_encoder_shapes: Sequence[Shapes],
) -> Resolution:
    """Place every module of `adapter` on a model of `spec`, given its parameter shapes (name -> shape,
    see `parameter_shapes`) of the UNet and of each text encoder in the spec's order.

    Shapes, not just names, so that a file made for another family is refused even where its module
    names exist in this model (SD1 and SD2 share them). Raises InvalidArgumentError when modules match
    nothing or their tensors do not fit, with counts and the family the file looks made for.
    """
    if len(text_encoder_shapes) != len(spec.text_encoders):
        raise ValueError(
            f"{spec.name} has {len(spec.text_encoders)} text encoder(s); "
            f"got the shapes of {len(text_encoder_shapes)}"
        )
    table = module_table(spec, unet_shapes, text_encoder_shapes)
    shapes_of = {UNET: unet_shapes} | {(TEXT, i): shapes for i, shapes in enumerate(text_encoder_shapes)}
    targets, unmatched, misfits, claimed = [], [], [], {}
    for key, parts in adapter.modules.items():
        ref = table.get(key)
        if ref is None or ref is AMBIGUOUS:
            unmatched.append(key)
            continue
        shapes = shapes_of[ref.component]
        params = {
            suffix: tuple(f"{module}.{suffix}" for module in ref.modules)
            for suffix in ("weight", "bias")
            if all(f"{module}.{suffix}" in shapes for module in ref.modules)
        }
        weights = [tuple(shapes[name]) for name in params["weight"]]
        weight_shape = (sum(shape[0] for shape in weights), *weights[0][1:])
        bias_shape = (weight_shape[0],) if "bias" in params else None
        if problem := _misfit(parts, weight_shape, bias_shape):
            misfits.append(f"{key}: {problem}")
        for place in [(ref.component, name) for name in ref.modules]:
            if place in claimed:
                raise InvalidArgumentError(
                    f"{adapter.source} changes {place[1]} twice ({claimed[place]!r} and {key!r}); "
                    "re-export the adapter with one key per module"
                )
            claimed[place] = key
        targets.append(Target(key, ref.component, params, weight_shape, dict(parts)))
    if unmatched or misfits:
        raise InvalidArgumentError(_mismatch_message(adapter, spec, unmatched, misfits))
    return Resolution(targets, dict(adapter.embeddings))


def _product(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _delta_extent(parts: Mapping[str, Tensor]) -> tuple[int, int] | None:
    """(output rows, element count) of the weight change the parts make; None for kinds not checked here."""

    def has(*names: str) -> bool:
        return all(name in parts for name in names)

    if has("lora_up.weight", "lora_down.weight"):
        up, down = parts["lora_up.weight"].shape, parts["lora_down.weight"].shape
        kernel = parts["lora_mid.weight"].shape[2:] if has("lora_mid.weight") else down[2:]
        return up[0], up[0] * down[1] * _product(kernel)
    if has("hada_w1_a", "hada_w1_b"):
        a, b = parts["hada_w1_a"].shape, parts["hada_w1_b"].shape
        if has("hada_t1"):
            return a[1], a[1] * b[1] * _product(parts["hada_t1"].shape[2:])
        return a[0], a[0] * _product(b[1:])
    if has("lokr_w1") or has("lokr_w1_a", "lokr_w1_b"):
        w1 = (
            parts["lokr_w1"].shape
            if has("lokr_w1")
            else (parts["lokr_w1_a"].shape[0], parts["lokr_w1_b"].shape[1])
        )
        if has("lokr_w2"):
            w2 = tuple(parts["lokr_w2"].shape)
        elif has("lokr_w2_a", "lokr_w2_b", "lokr_t2"):
            a, b = parts["lokr_w2_a"].shape, parts["lokr_w2_b"].shape
            w2 = (a[1], b[1], *parts["lokr_t2"].shape[2:])
        elif has("lokr_w2_a", "lokr_w2_b"):
            w2 = (parts["lokr_w2_a"].shape[0], *parts["lokr_w2_b"].shape[1:])
        else:
            return None
        return w1[0] * w2[0], _product(w1) * _product(w2)
    for part in ("diff", "w_norm"):
        if part in parts:
            return parts[part].shape[0], parts[part].numel()
    return None


def _misfit(
    parts: Mapping[str, Tensor], weight_shape: tuple[int, ...], bias_shape: tuple[int, ...] | None
) -> str:
    """Why the parts cannot change a weight of `weight_shape` (and bias of `bias_shape`), or ""."""
    extent = _delta_extent(parts)
    if extent is not None and extent != (weight_shape[0], _product(weight_shape)):
        rows, values = extent
        return f"its change is {rows} x {values // max(rows, 1)}, the weight is {tuple(weight_shape)}"
    if "weight" in parts and "lora_down.weight" not in parts:
        on_input = "on_input" in parts and bool(parts["on_input"].reshape(-1)[0])
        width = weight_shape[1] if on_input else weight_shape[0]
        if parts["weight"].numel() != width:
            return (
                f"its (IA)3 vector has {parts['weight'].numel()} values, the weight is {tuple(weight_shape)}"
            )
    for part in ("diff_b", "b_norm"):
        if part in parts and (bias_shape is None or parts[part].numel() != bias_shape[0]):
            return f"its {part} has {parts[part].numel()} values, the bias is {bias_shape or 'absent'}"
    return ""


def _file_families(adapter: AdapterFile) -> tuple[list[str], str]:
    """The base families the file looks made for, and why (empty when nothing tells)."""
    keys = list(adapter.modules)
    two_towers = [name for name, spec in BASE_FAMILIES.items() if len(spec.text_encoders) == 2]
    if any(key.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for key in keys):
        return two_towers, "it has keys for two text encoders"
    for key, parts in adapter.modules.items():
        if re.search(r"attn2[._](processor[._])?to_k$", key) and "lora_down.weight" in parts:
            width = parts["lora_down.weight"].shape[1]
            families = [name for name, spec in BASE_FAMILIES.items() if spec.unet.context_dim == width]
            return families, f"its cross-attention takes {width}-wide text"
    return [], ""


def _mismatch_message(
    adapter: AdapterFile, spec: FamilySpec, unmatched: list[str], misfits: list[str]
) -> str:
    total = len(adapter.modules)
    if unmatched:
        problem = (
            f"{len(unmatched)} of {total} modules in {adapter.source} match nothing in this "
            f"{spec.name} model, e.g. {', '.join(unmatched[:EXAMPLES])}"
        )
    else:
        problem = (
            f"{len(misfits)} of {total} modules in {adapter.source} do not fit this {spec.name} model's "
            f"weights, e.g. {'; '.join(misfits[:EXAMPLES])}"
        )
    families, reason = _file_families(adapter)
    try:
        base = parse_family(spec.name).base
    except InvalidArgumentError:
        base = spec.name
    if families and base not in families:
        named = " or ".join(families)
        return (
            f"{problem}; it looks like an {named} adapter ({reason}), not {spec.name}: "
            f"use it with an {named} model"
        )
    return f"{problem}; is it for another model family?"
