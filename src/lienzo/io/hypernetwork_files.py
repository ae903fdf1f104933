"""A1111 hypernetwork files (`.pt`): read without running code, checked, turned into plain layer weights.

A file is `torch.save` of a dict (A1111 `modules/hypernetworks/hypernetwork.py`, `Hypernetwork.save`):

- integer width keys (768, 320, 640, 1280; 1024 for SD 2), each a tuple `(k, v)` of two state dicts of A1111's
  `linear` Sequential: `linear.{i}.weight` / `linear.{i}.bias`. The Sequential holds, for each layer, a
  Linear, then the activation, then a LayerNorm, then a Dropout, where present, so the indices of the Linear
  layers shift; the layer order is read from the keys (2-D weights are Linear layers, a 1-D weight with a
  bias is a LayerNorm, one without is a PReLU's slope). Old files name the two Linear layers
  `linear1`/`linear2`.
- `layer_structure` (e.g. [1, 2, 1], width multipliers), `activation_func`, `is_layer_norm`,
  `activate_output`, `use_dropout`, `dropout_structure`, `last_layer_dropout`, `weight_initialization`,
  `step`, `name`, `sd_checkpoint`, `sd_checkpoint_name`, `optional_info`.

Missing keys take A1111's defaults (`Hypernetwork.load`): activation_func None (no activation, as
"linear"), activate_output True (ComfyUI defaults it to False; lienzo follows A1111), is_layer_norm False,
no dropout, layer_structure [1, 2, 1]. The layers themselves come from the keys, so a layer_structure is only
checked against them when the file has one, and LayerNorms are where the keys put them. Dropout is off at
inference, so it is read and ignored. The activation follows every Linear layer but the last, and the last
too when `activate_output` is true (A1111's rule).

The file is read with `torch.load(weights_only=True)`: a pickle that needs any class or function to load
is refused, never run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lienzo.errors import (
    CorruptCheckpointError,
    InvalidArgumentError,
    ModelNotFoundError,
)
from lienzo.io.formats import read_weights_only_pickle

HYPERNETWORK_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
DEFAULT_LAYER_STRUCTURE = (1.0, 2.0, 1.0)
DEFAULT_ACTIVATE_OUTPUT = True
"""A1111's default for files without `activate_output` (ComfyUI's is False)."""
NO_ACTIVATION = "linear"
LAYER_KEY = re.compile(r"linear\.(\d+)\.(weight|bias)")
OLD_KEYS = {
    "linear1.weight": "linear.0.weight",
    "linear1.bias": "linear.0.bias",
    "linear2.weight": "linear.1.weight",
    "linear2.bias": "linear.1.bias",
}
"""The first hypernetwork files' two Linear layers, renamed as A1111's `fix_old_state_dict` does."""


@dataclass(frozen=True)
class MLPWeights:
    """One k or v network of a width: per Linear layer, in order, its (weight, bias), the LayerNorm after it
    (weight, bias) or None, whether the activation follows it, and the activation's own weight (a PReLU's
    slope) or None."""

    linears: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    norms: tuple[tuple[torch.Tensor, torch.Tensor] | None, ...]
    activated: tuple[bool, ...]
    activation_weights: tuple[torch.Tensor | None, ...]


@dataclass(frozen=True)
class HypernetworkFile:
    """A hypernetwork file's contents: its (k, v) networks by width and the settings they run with."""

    source: str
    layers: dict[int, tuple[MLPWeights, MLPWeights]]
    activation: str = NO_ACTIVATION
    activate_output: bool = DEFAULT_ACTIVATE_OUTPUT
    layer_structure: tuple[float, ...] = DEFAULT_LAYER_STRUCTURE
    layer_norm: bool = False
    dropout_structure: tuple[float, ...] | None = None
    info: dict = field(default_factory=dict)
    """The file's other entries (name, step, sd_checkpoint_name, weight_initialization, ...)."""

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(sorted(self.layers))


def read_hypernetwork_file(path: str | os.PathLike) -> HypernetworkFile:
    """The contents of an A1111 hypernetwork `.pt` file; a pickle that needs code is refused
    (UnsafeCheckpointError), a damaged or foreign file is a CorruptCheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path} does not exist; check the path of the hypernetwork file")
    if path.suffix.lower() not in HYPERNETWORK_SUFFIXES:
        raise InvalidArgumentError(
            f"{path} is not a hypernetwork file: A1111 hypernetworks are .pt files "
            f"({', '.join(HYPERNETWORK_SUFFIXES)} are read)"
        )
    return parse_hypernetwork(read_weights_only_pickle(path), str(path))


def parse_hypernetwork(data: object, source: str) -> HypernetworkFile:
    """A HypernetworkFile from the dict a hypernetwork file holds (as `torch.load` returns it)."""
    if not isinstance(data, Mapping):
        raise _corrupt(source, f"it holds a {type(data).__name__}, not a dict")
    widths = {key: value for key, value in data.items() if isinstance(key, int) and not isinstance(key, bool)}
    if not widths:
        raise _corrupt(
            source, "no integer width keys (768, 320, ...) holding (k, v) networks; is it a hypernetwork?"
        )
    activation = data.get("activation_func") or NO_ACTIVATION
    if not isinstance(activation, str):
        raise _corrupt(source, f"activation_func is a {type(activation).__name__}, not a name")
    activate_output = bool(data.get("activate_output", DEFAULT_ACTIVATE_OUTPUT))
    structure = _numbers(data.get("layer_structure"), "layer_structure", source)
    dropout = _numbers(data.get("dropout_structure"), "dropout_structure", source)
    if structure is not None and (len(structure) < 2 or structure[0] != 1 or structure[-1] != 1):
        raise _corrupt(source, f"layer_structure {list(structure)} should start and end with 1")
    layers = {}
    for width, pair in sorted(widths.items()):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise _corrupt(source, f"width {width} should hold a (k, v) pair of state dicts")
        layers[width] = tuple(
            _mlp(state, width, f"{source}: width {width} {part}", activation, activate_output, structure)
            for part, state in zip("kv", pair, strict=True)
        )
    skipped = {"activation_func", "activate_output", "layer_structure", "dropout_structure", "is_layer_norm"}
    info = {key: value for key, value in data.items() if key not in widths and key not in skipped}
    return HypernetworkFile(
        source,
        layers,
        activation,
        activate_output,
        structure or DEFAULT_LAYER_STRUCTURE,
        bool(data.get("is_layer_norm", False)),
        dropout,
        info,
    )


def _corrupt(source: str, reason: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{source} is damaged or not an A1111 hypernetwork file ({reason}); re-download or re-export it"
    )


def _numbers(value: object, key: str, source: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(
        isinstance(item, int | float) and not isinstance(item, bool) for item in value
    ):
        raise _corrupt(source, f"{key} should be a list of numbers, not {value!r}")
    return tuple(float(item) for item in value)


def _mlp(
    state: object,
    width: int,
    source: str,
    activation: str,
    activate_output: bool,
    structure: tuple[float, ...] | None,
) -> MLPWeights:
    """One network's layers in key order, with their shapes checked along the chain width -> ... -> width."""
    if not isinstance(state, Mapping):
        raise _corrupt(source, f"it holds a {type(state).__name__}, not a state dict")
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = LAYER_KEY.fullmatch(OLD_KEYS.get(key, key)) if isinstance(key, str) else None
        if match is None or not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise _corrupt(source, f"unexpected entry {key!r}; layers are linear.N.weight and linear.N.bias")
        entries.setdefault(int(match.group(1)), {})[match.group(2)] = value
    linears: list[tuple[torch.Tensor, torch.Tensor]] = []
    norms: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    extra: list[torch.Tensor | None] = []
    for index in sorted(entries):
        weight, bias = entries[index].get("weight"), entries[index].get("bias")
        where = f"linear.{index}"
        if weight is None:
            raise _corrupt(source, f"{where} has a bias but no weight")
        if weight.ndim == 2:
            expected = linears[-1][0].shape[0] if linears else width
            if weight.shape[1] != expected or bias is None or bias.shape != weight.shape[:1]:
                shape = tuple(weight.shape)
                raise _corrupt(
                    source, f"{where} is a {shape} layer where {expected} inputs and a bias belong"
                )
            linears.append((weight, bias))
            norms.append(None)
            extra.append(None)
        elif weight.ndim == 1 and linears and bias is not None and norms[-1] is None:
            if weight.shape != linears[-1][0].shape[:1] or bias.shape != weight.shape:
                raise _corrupt(source, f"LayerNorm {where} does not match the layer before it")
            norms[-1] = (weight, bias)
        elif weight.ndim == 1 and linears and bias is None and norms[-1] is None and extra[-1] is None:
            if activation.lower() != "prelu" or weight.shape != (1,):
                shape = tuple(weight.shape)
                raise _corrupt(source, f"{where} {shape} is no layer of a {activation!r} hypernetwork")
            extra[-1] = weight
        else:
            shape = tuple(weight.shape)
            raise _corrupt(source, f"{where} {shape} is not a Linear or LayerNorm layer in A1111's order")
    if not linears or linears[-1][0].shape[0] != width:
        raise _corrupt(source, f"its last layer should give back {width} features")
    found = [width, *(weight.shape[0] for weight, _ in linears)]
    if structure is not None and found != [int(width * multiplier) for multiplier in structure]:
        raise _corrupt(source, f"its layer widths {found} do not match its layer_structure {list(structure)}")
    last = len(linears) - 1
    active = activation.lower() != NO_ACTIVATION
    activated = tuple(active and (index < last or activate_output) for index in range(len(linears)))
    if activation.lower() == "prelu" and any(
        on and weight is None for on, weight in zip(activated, extra, strict=True)
    ):
        raise _corrupt(source, "a PReLU activation has no weight")
    return MLPWeights(tuple(linears), tuple(norms), activated, tuple(extra))
