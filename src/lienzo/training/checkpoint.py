"""Training checkpoints: one file holding everything a run needs to continue exactly, written atomically."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lienzo.errors import CorruptCheckpointError, InvalidArgumentError
from lienzo.io.atomic import atomic_path

CHECKPOINT_FORMAT = "lienzo-training-state-1"
CHECKPOINT_NAME = "training_state.pt"


def atomic_torch_save(state: dict[str, Any], path: Path) -> None:
    """Write `state` to a temporary file next to `path`, then rename it over `path` (os.replace).

    A failure at any point leaves the previous file at `path` untouched and removes the partial file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        torch.save(state, handle)


def load_training_state(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by `atomic_torch_save` (tensors and plain containers only, no code)."""
    if not path.is_file():
        raise InvalidArgumentError(f"no training checkpoint at {path}; check the path or start afresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CorruptCheckpointError(
            f"training checkpoint {path} cannot be read ({error}); resume from another file or start over"
        ) from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CorruptCheckpointError(
            f"{path} is not a lienzo training checkpoint; resume from a file that training wrote"
        )
    return state


def check_same_run(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raise if the checkpoint's run description differs from the current one, naming the fields."""
    if saved == current:
        return
    differing = sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))
    raise InvalidArgumentError(
        f"checkpoint {path} was written by a run with a different configuration (differs in: "
        f"{', '.join(differing)}); resume with the same config and models, or start a new output folder"
    )


def capture_rng_states(generator: torch.Generator) -> dict[str, Any]:
    """RNG states of torch (CPU, CUDA), numpy, python `random` and the training generator."""
    numpy_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": list(random.getstate()),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    """Put back the states captured by `capture_rng_states`."""
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    generator.set_state(states["generator"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
