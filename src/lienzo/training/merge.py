"""A1111's Checkpoint Merger on ModelFiles: weighted sum, add difference, LoRA and VAE bake-in.

Every formula is applied per tensor in float32 (M = multiplier), on every component (UNet, VAE, text
encoders), as A1111's `run_modelmerger` does on the keys that exist in B:
- weighted sum:     (1 - M) * A + M * B
- add difference:   A + M * (B - C); a key missing from C contributes zero (the result keeps A)
- no interpolation: A (for a VAE or LoRA bake-in and a dtype change alone)
Position ids are never merged. An A whose first conv takes more input channels than B's (inpaint: 9,
depth: 5) merges only B's channels (`[:, :4]`), so A stays an inpaint model; otherwise the models must
have one architecture. LoRAs are baked as the Pipeline patches them: W + m * delta(W) with the deltas of
`lienzo.adapters.algorithms`, all computed from the original weights and summed, then cast once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from lienzo.adapters import WeightPatch, patch_weights
from lienzo.adapters.algorithms import module_patches
from lienzo.errors import InvalidArgumentError, ModelNotFoundError
from lienzo.io import write_safetensors
from lienzo.io.adapter_files import read_adapter_file, resolve_targets
from lienzo.io.adapter_keys import TEXT, UNET
from lienzo.io.formats import file_sha256
from lienzo.io.model_files import ModelFiles
from lienzo.io.single_file import join_single_file, single_file_metadata
from lienzo.models.specs import family_spec, parse_family

METHODS = ("weighted_sum", "add_difference", "no_interpolation")
A1111_METHOD_NAMES = {
    "weighted_sum": "Weighted sum",
    "add_difference": "Add difference",
    "no_interpolation": "No interpolation",
}
SKIPPED_SUFFIX = "position_ids"
MERGE_RECIPE_KEY = "sd_merge_recipe"
MERGE_MODELS_KEY = "sd_merge_models"
EXAMPLES = 3


@dataclass(frozen=True)
class LoraBake:
    """A LoRA/LyCORIS file to bake in at `strength` (UNet) and `text_strength` (default: the same)."""

    path: Path
    strength: float = 1.0
    text_strength: float | None = None


# --- merging --------------------------------------------------------------------------------------------


def merge_models(
    a: ModelFiles,
    b: ModelFiles | None = None,
    c: ModelFiles | None = None,
    *,
    method: str = "weighted_sum",
    multiplier: float = 0.3,
) -> ModelFiles:
    """A merged with B (and C) by A1111's `method`; floating-point tensors come back in float32.

    Only tensors present in B (and A) change. The result keeps A's family, configs and tokenizers.
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown merge method {method!r}; use one of {', '.join(METHODS)}")
    needed = {"weighted_sum": ("B",), "add_difference": ("B", "C"), "no_interpolation": ()}[method]
    given = {"B": b, "C": c}
    missing = [role for role in needed if given[role] is None]
    if missing:
        raise InvalidArgumentError(f"{method} needs model {' and '.join(missing)}; pass it")
    if method == "no_interpolation":
        return _with_states(a, [_float32(state) for state in _states(a)])
    check_mergeable(a, b, "B")
    c_states: list[dict[str, Tensor] | None] = [None] * len(_states(a))
    if method == "add_difference":
        check_mergeable(a, c, "C")
        if c.spec.unet.in_channels != b.spec.unet.in_channels:
            raise InvalidArgumentError(
                f"B ({b.family}) and C ({c.family}) take different UNet inputs; B - C needs models of one "
                "variant (an inpaint A takes a plain B and C)"
            )
        c_states = _states(c)

        def combine(x: Tensor, y: Tensor) -> Tensor:
            return x + multiplier * y
    else:

        def combine(x: Tensor, y: Tensor) -> Tensor:
            return (1 - multiplier) * x + multiplier * y

    merged = [
        _merge_state(sa, sb, sc, combine, name)
        for sa, sb, sc, name in zip(_states(a), _states(b), c_states, list(a.components()), strict=True)
    ]
    return _with_states(a, merged)


def check_mergeable(a: ModelFiles, other: ModelFiles, role: str) -> None:
    """Refuse models of two architectures (by family: sd2 and sd2-v share one); an inpaint or depth A may
    take a plain model (its extra UNet input channels are kept)."""
    mine, theirs = parse_family(a.family), parse_family(other.family)
    if family_architecture(mine.base) != family_architecture(theirs.base):
        raise InvalidArgumentError(
            f"cannot merge model A ({a.family}) with model {role} ({other.family}): they are different "
            "model families; merge models of one family"
        )
    if theirs.variant not in (None, mine.variant):
        raise InvalidArgumentError(
            f"model {role} is a {other.family} model and A a {a.family} one; when merging an inpaint or "
            f"depth model with a normal one, the {other.family} model must be A"
        )


def family_architecture(base: str) -> tuple:
    """What fixes a base family's weight shapes: its reference UNet and text encoder configs."""
    spec = family_spec(base)
    return spec.unet, tuple(tower.config for tower in spec.text_encoders)


def _states(files: ModelFiles) -> list[dict[str, Tensor]]:
    return [files.unet, files.vae, *files.text_encoders]


def _with_states(files: ModelFiles, states: list[dict[str, Tensor]]) -> ModelFiles:
    unet, vae, *texts = states
    return replace(files, unet=unet, vae=vae, text_encoders=texts)


def _float32(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.float() if value.is_floating_point() else value for key, value in state.items()}


def _merge_state(
    a: Mapping[str, Tensor],
    b: Mapping[str, Tensor],
    c: Mapping[str, Tensor] | None,
    combine: Callable[[Tensor, Tensor], Tensor],
    component: str,
) -> dict[str, Tensor]:
    """One component merged key by key in float32: combine(A, B), or combine(A, B - C) when C is given."""
    merged = {}
    for key, value in a.items():
        if not value.is_floating_point():
            merged[key] = value
            continue
        mine, theirs = value.float(), b.get(key)
        if theirs is None or key.endswith(SKIPPED_SUFFIX) or not theirs.is_floating_point():
            merged[key] = mine
            continue
        theirs = theirs.float()
        if c is not None:
            base = c.get(key)
            if base is None:  # A1111: B - C is zero where C lacks the key
                merged[key] = mine
                continue
            if base.shape != theirs.shape:
                raise InvalidArgumentError(
                    f"{component} weight {key} is {tuple(theirs.shape)} in B but {tuple(base.shape)} in C; "
                    "B and C must be models of one family and size"
                )
            theirs = theirs - base.float()
        if mine.shape == theirs.shape:
            merged[key] = combine(mine, theirs)
        elif _channels_prefix(mine.shape, theirs.shape):
            width = theirs.shape[1]
            mine = mine.clone()
            mine[:, :width] = combine(mine[:, :width], theirs)
            merged[key] = mine
        else:
            raise InvalidArgumentError(
                f"{component} weight {key} is {tuple(mine.shape)} in A but {tuple(theirs.shape)} in the "
                "other model; merge models of one family and size"
            )
    return merged


def _channels_prefix(mine: torch.Size, theirs: torch.Size) -> bool:
    """A's tensor has more input channels (dim 1) than the other's and is otherwise the same shape."""
    return (
        len(mine) == len(theirs) >= 2
        and mine[0] == theirs[0]
        and mine[2:] == theirs[2:]
        and mine[1] > theirs[1]
    )


# --- LoRA bake-in ---------------------------------------------------------------------------------------


def bake_lora(
    files: ModelFiles,
    lora_path: str | os.PathLike,
    *,
    strength: float = 1.0,
    text_strength: float | None = None,
) -> ModelFiles:
    """The model with a LoRA/LyCORIS file's change written into its weights: W + m * delta(W)."""
    return bake_loras(files, [LoraBake(Path(lora_path), strength, text_strength)])


def bake_loras(files: ModelFiles, loras: Sequence[LoraBake]) -> ModelFiles:
    """The model with several LoRA files baked in, each delta computed from the original weights and
    summed before one cast (as the Pipeline's patcher applies them together)."""
    states = {UNET: files.unet} | {(TEXT, i): state for i, state in enumerate(files.text_encoders)}
    shapes = {component: _shapes(state) for component, state in states.items()}
    applied: dict = {component: [] for component in states}
    for lora in loras:
        adapter = read_adapter_file(lora.path)
        text_shapes = [shapes[(TEXT, i)] for i in range(len(files.text_encoders))]
        resolution = resolve_targets(adapter, files.spec, shapes[UNET], text_shapes)
        text = lora.strength if lora.text_strength is None else lora.text_strength
        for target in resolution.targets:
            patches = module_patches(target.parts, target.params, f"{lora.path.name}: {target.key}")
            strength = lora.strength if target.component == UNET else text
            applied[target.component].append((patches, float(strength)))
    baked = {component: apply_patches(states[component], applied[component]) for component in states}
    texts = [baked[(TEXT, i)] for i in range(len(files.text_encoders))]
    return replace(files, unet=baked[UNET], text_encoders=texts)


def apply_patches(
    state: Mapping[str, Tensor], applied: Sequence[tuple[Sequence[WeightPatch], float]]
) -> dict[str, Tensor]:
    """A state dict with weight patches applied at their strengths, computed exactly as
    `lienzo.adapters.patcher.ModelPatcher` patches a network (the same `patch_weights`)."""
    return {**state, **patch_weights(state.__getitem__, applied)}


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


# --- VAE bake-in ----------------------------------------------------------------------------------------


def bake_vae(files: ModelFiles, vae: Mapping[str, Tensor], *, source: str = "the VAE") -> ModelFiles:
    """The model with its VAE replaced by `vae` (lienzo naming), which must match its keys and shapes."""
    missing = sorted(set(files.vae) - set(vae))
    extra = sorted(set(vae) - set(files.vae))
    misfit = sorted(key for key in set(files.vae) & set(vae) if vae[key].shape != files.vae[key].shape)
    if missing or extra or misfit:
        problems = [
            f"{len(names)} {what}, e.g. {', '.join(names[:EXAMPLES])}"
            for names, what in ((missing, "missing"), (extra, "unexpected"), (misfit, "of another shape"))
            if names
        ]
        raise InvalidArgumentError(
            f"{source} does not fit this {files.family} model's VAE ({'; '.join(problems)} weights); "
            "use a VAE made for this model family"
        )
    return replace(files, vae={key: vae[key].float() for key in files.vae})


# --- writing --------------------------------------------------------------------------------------------


def check_destination(dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """A `.safetensors` destination that may be written (checked before any work is done)."""
    dst = Path(dst)
    if dst.suffix.lower() != ".safetensors":
        raise InvalidArgumentError(f"the output is one .safetensors file; name it {dst.stem}.safetensors")
    if dst.exists() and not overwrite:
        raise InvalidArgumentError(f"{dst} already exists; choose another output or pass --overwrite")
    if not dst.parent.is_dir():
        raise ModelNotFoundError(f"the folder {dst.parent} does not exist; create it first")
    return dst


def write_merged(
    files: ModelFiles,
    dst: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model as one ldm/sgm `.safetensors` file (lienzo's single-file layout and configs) with
    extra metadata, atomically: the file appears whole or not at all."""
    dst = check_destination(dst, overwrite=overwrite)
    header = single_file_metadata(files) | {"format": "pt"} | dict(metadata or {})
    write_safetensors(dst, join_single_file(files, dtype=dtype), header)
    return dst


def source_sha256(path: Path | None) -> str | None:
    """The sha256 of a source file (None for a folder or no path)."""
    return file_sha256(path) if path is not None and Path(path).is_file() else None


def merge_metadata(
    sources: Sequence[Path],
    *,
    method: str,
    multiplier: float,
    dtype: torch.dtype,
    vae: Path | None = None,
    loras: Sequence[LoraBake] = (),
    inpainting: bool = False,
) -> dict[str, str]:
    """A1111-style `sd_merge_recipe` and `sd_merge_models` metadata: the sources (A, B, C) by name and
    sha256, the method, multiplier, output dtype, baked VAE and LoRAs."""
    hashes = [source_sha256(path) for path in sources]
    roles = ("primary", "secondary", "tertiary")
    recipe = {
        "type": "lienzo",
        **{f"{role}_model_hash": digest for role, digest in zip(roles, hashes, strict=False)},
        "models": [
            {"name": path.name, "sha256": digest} for path, digest in zip(sources, hashes, strict=True)
        ],
        "interp_method": A1111_METHOD_NAMES[method],
        "method": method,
        "multiplier": multiplier,
        "save_as_half": dtype == torch.float16,
        "dtype": str(dtype).removeprefix("torch."),
        "bake_in_vae": None if vae is None else vae.name,
        "loras": [
            {
                "name": lora.path.name,
                "sha256": source_sha256(lora.path),
                "strength": lora.strength,
                "text_strength": lora.strength if lora.text_strength is None else lora.text_strength,
            }
            for lora in loras
        ],
        "is_inpainting": inpainting,
    }
    models = {digest: {"name": path.name} for path, digest in zip(sources, hashes, strict=True) if digest}
    return {MERGE_RECIPE_KEY: json.dumps(recipe), MERGE_MODELS_KEY: json.dumps(models)}
