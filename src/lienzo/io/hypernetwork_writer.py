"""Writing A1111 hypernetwork files (`.pt`) as A1111's `Hypernetwork.save` lays them out.

The file is `torch.save` of one dict: each width (int) -> a tuple of the k and v networks' state dicts
(`linear.{i}.weight` / `linear.{i}.bias`, indices counting every module of A1111's Sequential), then
`step`, `name`, `layer_structure`, `activation_func`, `is_layer_norm`, `weight_initialization`,
`sd_checkpoint`, `sd_checkpoint_name`, `activate_output`, `use_dropout`, `dropout_structure`,
`last_layer_dropout` and `optional_info`. Only plain containers, numbers, strings and tensors go in, so
`torch.load(weights_only=True)` (lienzo's reader) opens it, and A1111's `Hypernetwork.load` does too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lienzo.errors import InvalidArgumentError
from lienzo.io.atomic import atomic_path

WEIGHT_INITIALIZATIONS = ("Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal")
"""A1111's weight_initialization choices."""


@dataclass(frozen=True)
class HypernetworkSettings:
    """The settings an A1111 hypernetwork file records beside its weights (A1111's names in comments)."""

    layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation: str = "linear"  # activation_func
    layer_norm: bool = False  # is_layer_norm
    weight_initialization: str = "Normal"
    activate_output: bool = False
    use_dropout: bool = False
    last_layer_dropout: bool = True

    def __post_init__(self) -> None:
        structure = self.layer_structure
        if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1:
            raise InvalidArgumentError(
                f"layer structure {list(structure)} must start and end with 1, e.g. 1,2,1 or 1,1.5,1.5,1"
            )
        if any(multiplier <= 0 for multiplier in structure):
            raise InvalidArgumentError(f"layer structure {list(structure)} needs positive multipliers")
        if self.weight_initialization not in WEIGHT_INITIALIZATIONS:
            raise InvalidArgumentError(
                f"unknown weight initialization {self.weight_initialization!r}; use one of "
                f"{', '.join(WEIGHT_INITIALIZATIONS)}"
            )

    @property
    def dropout_structure(self) -> tuple[float, ...]:
        """Dropout probability after each layer, A1111's `parse_dropout_structure`: none without dropout,
        else 0.3 after every hidden layer but the last, which gets it only with `last_layer_dropout`."""
        count = len(self.layer_structure)
        if not self.use_dropout:
            return (0.0,) * count
        last = 0.3 if self.last_layer_dropout else 0.0
        return (0.0, *([0.3] * (count - 3)), last, 0.0)


def hypernetwork_file_contents(
    layers: Mapping[int, tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]],
    settings: HypernetworkSettings,
    *,
    name: str,
    step: int,
    sd_checkpoint: str | None = None,
    sd_checkpoint_name: str | None = None,
) -> dict:
    """The dict A1111 saves: (k, v) state dicts by width, then the settings and training record."""
    contents: dict = {
        int(width): tuple(
            {key: value.detach().to("cpu", torch.float32).clone() for key, value in state.items()}
            for state in pair
        )
        for width, pair in sorted(layers.items())
    }
    dropout = settings.dropout_structure
    contents.update(
        {
            "step": int(step),
            "name": name,
            "layer_structure": _plain_numbers(settings.layer_structure),
            "activation_func": settings.activation,
            "is_layer_norm": settings.layer_norm,
            "weight_initialization": settings.weight_initialization,
            "sd_checkpoint": sd_checkpoint,
            "sd_checkpoint_name": sd_checkpoint_name,
            "activate_output": settings.activate_output,
            "use_dropout": settings.use_dropout,
            "dropout_structure": _plain_numbers(dropout),
            "last_layer_dropout": dropout[-2] != 0,
            "optional_info": None,
        }
    )
    return contents


def write_hypernetwork_file(path: str | os.PathLike, contents: Mapping) -> Path:
    """Save `contents` (from `hypernetwork_file_contents`) to `path` atomically (temp file, then rename)."""
    path = Path(path)
    if path.suffix.lower() != ".pt":
        raise InvalidArgumentError(f"A1111 hypernetworks are .pt files; name the output {path.stem}.pt")
    with atomic_path(path) as temporary:
        torch.save(dict(contents), temporary)
    return path


def _plain_numbers(values: Sequence[float]) -> list[int | float]:
    """Numbers as A1111 writes them: whole multipliers as ints (1, 2, 1), others as floats (1.5)."""
    return [int(value) if float(value).is_integer() else float(value) for value in values]
