"""The delta formula of every LoRA and LyCORIS algorithm, each written once.

An adapter file holds, per targeted module, a few tensors named by their part (`lora_down.weight`,
`hada_w1_a`, `diff`, ...). `algorithm_of` names the algorithm from that set of parts, and
`parameter_deltas` turns it into one callable per changed parameter ("weight", and "bias" where the
algorithm changes it). A callable takes the original parameter in float32 and returns the change to add
at multiplier 1, so the patcher computes `W' = W + m * delta(W)`. All arithmetic is float32 whatever the
file's dtype, on the original parameter's device; shapes are reconciled by reshaping the flat
(out, in*k*k) product, so a linear LoRA patches a 1x1 conv and a 1x1-conv LoRA patches a linear layer.

Scale. s = alpha / rank for the low-rank algorithms (LoRA, LoHa, LoKr, GLoRA); no alpha, or alpha 0,
means s = 1 (kohya and LyCORIS store alpha = rank in those cases). A `scale` tensor, if present, is used
in place of alpha / rank, and multiplies the delta of the other algorithms too (A1111 `calc_scale`).
LoKr with both Kronecker factors full has s = 1 whatever alpha says (A1111, ComfyUI, LyCORIS). Full,
norm and (IA)^3 deltas have no alpha.

DoRA (Liu et al. 2024). With `dora_scale` next to LoRA, LoHa or LoKr, V = W + s*dW is renormalized:
W_d = V * dora_scale / ||V||, the norm taken per output row when `dora_scale` is (out, 1, ...) (or a
1-d (out,) vector, PEFT's magnitude), else per input channel (`dora_scale` (1, in, ...), the LyCORIS
default from 2.2.0 until 3.2.0). The "weight" delta is W_d - W, so a multiplier m gives
W + m * (W_d - W), the ComfyUI and A1111 convention. It is linear in m, so strengths compose like every
other delta in the patcher (two halves make a whole, m = 0 is the original), and at m = 1 it equals
LyCORIS and PEFT. LyCORIS's rule for other m, V * (m * (dora_scale/||V|| - 1) + 1) with dW not scaled
by m (so m = 0 still gives V), is not linear in m and differs from this at every m other than 1.
ComfyUI's output-axis branch divides by the norm of the original W rather than V; that is not copied
here: both axes divide by ||V||, as the paper and PEFT do.
The only guard is that ||V|| is clamped below at float32's smallest normal number, so an all-zero row
gives a zero row instead of NaN; LyCORIS and ComfyUI add float32 eps (1.2e-7) to the norm instead, which
differs from this by about 1e-7 / ||V|| relative.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from lienzo.adapters.patcher import WeightPatch
from lienzo.errors import InvalidArgumentError

DeltaFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModuleWeights:
    """One module's tensors from an adapter file, by their part names without the module prefix,
    e.g. {"lora_down.weight": t, "lora_up.weight": t, "alpha": t} or {"hada_w1_a": ...}
    or {"diff": ..., "diff_b": ...}."""

    tensors: dict[str, torch.Tensor]


# --- recognizing the algorithm -----------------------------------------------------------------------


@dataclass(frozen=True)
class _PartSet:
    """The parts an algorithm's module may hold: all of `required`, any of `optional`, and from each
    group in `choices` exactly one alternative, whole (the empty alternative means "none of these")."""

    required: frozenset[str]
    optional: frozenset[str] = frozenset()
    choices: tuple[tuple[frozenset[str], ...], ...] = ()

    def matches(self, parts: frozenset[str]) -> bool:
        if not self.required <= parts:
            return False
        known = self.required | self.optional
        for group in self.choices:
            members = frozenset().union(*group)
            if (parts & members) not in group:
                return False
            known |= members
        return parts <= known


def _parts(*names: str) -> frozenset[str]:
    return frozenset(names)


_SCALES = _parts("alpha", "scale")
_LOW_RANK = _SCALES | {"dora_scale"}

_ALGORITHMS: dict[str, _PartSet] = {
    "lora": _PartSet(_parts("lora_up.weight", "lora_down.weight"), _LOW_RANK | {"lora_mid.weight"}),
    "loha": _PartSet(
        _parts("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
        _LOW_RANK,
        ((frozenset(), _parts("hada_t1", "hada_t2")),),
    ),
    "lokr": _PartSet(
        frozenset(),
        _LOW_RANK,
        (
            (_parts("lokr_w1"), _parts("lokr_w1_a", "lokr_w1_b")),
            (
                _parts("lokr_w2"),
                _parts("lokr_w2_a", "lokr_w2_b"),
                _parts("lokr_w2_a", "lokr_w2_b", "lokr_t2"),
            ),
        ),
    ),
    "ia3": _PartSet(_parts("weight"), _parts("on_input", "scale")),
    "glora": _PartSet(_parts("a1.weight", "a2.weight", "b1.weight", "b2.weight"), _SCALES | {"bm.weight"}),
    "full": _PartSet(_parts("diff"), _SCALES | {"diff_b"}),
    "norm": _PartSet(_parts("w_norm"), _SCALES | {"b_norm"}),
}


def algorithm_of(module: ModuleWeights) -> str:
    """The algorithm ("lora", "loha", "lokr", "ia3", "glora", "full", "norm") whose parts `module` holds."""
    parts = frozenset(module.tensors)
    for name, spec in _ALGORITHMS.items():
        if spec.matches(parts):
            return name
    raise InvalidArgumentError(
        f"adapter module with parts {sorted(parts)} matches no known algorithm "
        f"({', '.join(_ALGORITHMS)}); the file may use an unsupported type (e.g. OFT/BOFT), "
        "be incomplete, or mix two algorithms in one module"
    )


# --- shared pieces ------------------------------------------------------------------------------------


def _f32(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return tensor.to(device=like.device, dtype=torch.float32)


def _number(tensor: torch.Tensor, part: str) -> float:
    if tensor.numel() != 1:
        raise InvalidArgumentError(
            f"adapter part {part!r} should hold one number, got shape {tuple(tensor.shape)}"
        )
    return float(tensor.reshape(()).float().item())


def _scale(tensors: dict[str, torch.Tensor], rank: int | None) -> float:
    """s: the `scale` tensor (A1111), else alpha/rank (LoRA, Hu et al. 2021, Sec. 4.1), else 1."""
    if "scale" in tensors:
        return _number(tensors["scale"], "scale")
    alpha = _number(tensors["alpha"], "alpha") if "alpha" in tensors else 0.0
    if rank is None or alpha == 0.0:
        return 1.0
    return alpha / rank


def _fit(delta: torch.Tensor, weight: torch.Tensor, algorithm: str) -> torch.Tensor:
    if delta.numel() != weight.numel():
        raise InvalidArgumentError(
            f"{algorithm} delta of shape {tuple(delta.shape)} does not fit a parameter of shape "
            f"{tuple(weight.shape)}; the adapter was made for a different model"
        )
    return delta.reshape(weight.shape)


def _matrix(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(tensor.shape[0], -1)


def _tucker(core: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """core x1 left x2 right: (r1, r2, *k), (out, r1), (r2, in) -> (out, in, *k) (Kolda & Bader 2009)."""
    return torch.einsum("ab...,oa,bi->oi...", core, left, right)


# --- the formulas -------------------------------------------------------------------------------------


def _lora(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """dW = s * up @ down, or Tucker up x mid x down with lora_mid (LoRA: Hu et al. 2021, eq. 3)."""
    down, up = _f32(t["lora_down.weight"], weight), _f32(t["lora_up.weight"], weight)
    up = up * _scale(t, down.shape[0])
    if "lora_mid.weight" in t:
        delta = _tucker(_f32(t["lora_mid.weight"], weight), _matrix(up), _matrix(down))
    else:
        delta = _matrix(up) @ _matrix(down)
    return _fit(delta, weight, "LoRA")


def _loha(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """dW = s * (w1_a @ w1_b) ⊙ (w2_a @ w2_b), halves Tucker with hada_t (FedPara: Hyeon-Woo et al. 2022)."""
    w1a, w1b = _f32(t["hada_w1_a"], weight), _f32(t["hada_w1_b"], weight)
    w2a, w2b = _f32(t["hada_w2_a"], weight), _f32(t["hada_w2_b"], weight)
    scale = _scale(t, w1b.shape[0])
    if "hada_t1" in t:
        first = _tucker(_f32(t["hada_t1"], weight), w1a.T, w1b)
        second = _tucker(_f32(t["hada_t2"], weight), w2a.T, w2b)
    else:
        first, second = _matrix(w1a) @ _matrix(w1b), _matrix(w2a) @ _matrix(w2b)
    return _fit(first * second, weight, "LoHa") * scale


def _lokr(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """dW = s * kron(w1, w2), factors full, a @ b or Tucker (LoKr: Yeh et al. 2023, LyCORIS paper)."""
    rank = None
    if "lokr_w1" in t:
        w1 = _f32(t["lokr_w1"], weight)
    else:
        w1 = _f32(t["lokr_w1_a"], weight) @ _f32(t["lokr_w1_b"], weight)
        rank = t["lokr_w1_b"].shape[0]
    if "lokr_w2" in t:
        w2 = _f32(t["lokr_w2"], weight)
    else:
        w2a, w2b = _f32(t["lokr_w2_a"], weight), _f32(t["lokr_w2_b"], weight)
        w2 = _tucker(_f32(t["lokr_t2"], weight), w2a.T, w2b) if "lokr_t2" in t else w2a @ _matrix(w2b)
        rank = w2b.shape[0]
    # rank None (both factors full): s = 1 unless a `scale` tensor says otherwise.
    scale = _scale(t, rank) if rank is not None or "scale" in t else 1.0
    # kron of (a, c) with (b, d*k*k) then reshape == kron with w1 broadcast over the kernel axes.
    return _fit(torch.kron(w1, _matrix(w2)), weight, "LoKr") * scale


def _channel_shape(weight: torch.Tensor, axis: int) -> list[int]:
    shape = [1] * weight.dim()
    shape[axis] = weight.shape[axis]
    return shape


def _ia3(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """dW = W * w, w scaling input columns if on_input else output rows ((IA)^3: Liu et al. 2022)."""
    on_input = "on_input" in t and bool(_number(t["on_input"], "on_input"))
    axis = 1 if on_input else 0
    w = _f32(t["weight"], weight).reshape(-1)
    if w.numel() != weight.shape[axis]:
        raise InvalidArgumentError(
            f"(IA)^3 vector of {w.numel()} entries does not fit the {'input' if on_input else 'output'} "
            f"axis ({weight.shape[axis]}) of a parameter of shape {tuple(weight.shape)}; "
            "the adapter was made for a different model"
        )
    return weight * w.reshape(_channel_shape(weight, axis)) * _scale(t, None)


def _glora(t: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """dW = s * (W @ a1 @ a2 + b1 @ b2), old layout's names swapped (GLoRA: Chavan et al. 2023)."""
    a1, a2 = _matrix(_f32(t["a1.weight"], weight)), _matrix(_f32(t["a2.weight"], weight))
    b1, b2 = _matrix(_f32(t["b1.weight"], weight)), _matrix(_f32(t["b2.weight"], weight))
    out, inputs = weight.shape[0], weight.shape[1]
    flat = _matrix(weight)
    # Current LyCORIS (since 2024-05): a1 (in, r), a2 (r, in), b1 (out, r), b2 (r, in*k*k) or Tucker bm.
    b_rows = t["bm.weight"].shape[0] if "bm.weight" in t else b2.shape[0]
    if a1.shape == (inputs, a2.shape[0]) and a2.shape[1] == inputs and b1.shape == (out, b_rows):
        if "bm.weight" in t:
            b = _fit(_tucker(_f32(t["bm.weight"], weight), b1, b2), weight, "GLoRA")
        else:
            b = _fit(b1 @ b2, weight, "GLoRA")
        wa = torch.einsum("oi...,ir,rj->oj...", weight, a1, a2)
        return (wa + b) * _scale(t, a2.shape[0])
    # The first layout (LyCORIS 2023): a1 (r, in), a2 (in, r), b1 (r, in), b2 (out, r); linear or 1x1 only.
    old = "bm.weight" not in t and a2.shape == (flat.shape[1], a1.shape[0]) and b2.shape == (out, b1.shape[0])
    if old and a1.shape[1] == flat.shape[1] and b1.shape[1] == flat.shape[1]:
        return _fit(flat @ a2 @ a1 + b2 @ b1, weight, "GLoRA") * _scale(t, a1.shape[0])
    raise InvalidArgumentError(
        f"GLoRA parts a1 {tuple(a1.shape)}, a2 {tuple(a2.shape)}, b1 {tuple(b1.shape)}, b2 {tuple(b2.shape)} "
        f"fit neither GLoRA layout for a parameter of shape {tuple(weight.shape)}; "
        "the adapter was made for a different model"
    )


def _dora(dora_scale: torch.Tensor, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """W_d - W, V = W + dW, W_d = V * dora_scale / ||V|| per row or column (DoRA: Liu et al. 2024)."""
    magnitude = _f32(dora_scale, weight)
    out, inputs = weight.shape[0], weight.shape[1]
    if magnitude.shape[0] == out and magnitude.numel() == out:
        axis = 0
    elif magnitude.numel() == inputs:
        axis = 1
    else:
        raise InvalidArgumentError(
            f"DoRA dora_scale of shape {tuple(magnitude.shape)} fits neither the output ({out}) nor the "
            f"input ({inputs}) axis of a parameter of shape {tuple(weight.shape)}"
        )
    v = weight + delta
    other_axes = [d for d in range(v.dim()) if d != axis]
    norm = torch.linalg.vector_norm(v, dim=other_axes, keepdim=True)
    norm = norm.clamp_min(torch.finfo(torch.float32).tiny)
    return v * (magnitude.reshape(_channel_shape(weight, axis)) / norm) - weight


Formula = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


def _with_dora(formula: Formula, tensors: dict[str, torch.Tensor]) -> DeltaFn:
    def delta(weight: torch.Tensor) -> torch.Tensor:
        weight = weight.to(torch.float32)
        if weight.dim() < 2:
            raise InvalidArgumentError(
                f"a {formula.__name__.strip('_')} adapter targets a linear or conv weight, not a parameter "
                f"of shape {tuple(weight.shape)}; the adapter was made for a different model"
            )
        change = formula(tensors, weight)
        if "dora_scale" in tensors:
            return _dora(tensors["dora_scale"], weight, change)
        return change

    return delta


def _additive(part: str, tensors: dict[str, torch.Tensor], algorithm: str) -> DeltaFn:
    """dP = s * stored difference (full fine-tune difference; norm-layer weight and bias difference)."""

    def delta(parameter: torch.Tensor) -> torch.Tensor:
        parameter = parameter.to(torch.float32)
        return _fit(_f32(tensors[part], parameter), parameter, algorithm) * _scale(tensors, None)

    return delta


_WEIGHT_FORMULAS: dict[str, Formula] = {
    "lora": _lora,
    "loha": _loha,
    "lokr": _lokr,
    "ia3": _ia3,
    "glora": _glora,
}


def parameter_deltas(module: ModuleWeights) -> dict[str, DeltaFn]:
    """The change to each parameter at multiplier 1, keyed by the parameter's suffix ("weight", "bias").

    Each callable takes the original parameter (converted to float32 if it is not) and returns a
    float32 tensor of the same shape; the caller applies `P + m * delta(P)`.
    """
    algorithm = algorithm_of(module)
    tensors = dict(module.tensors)
    if algorithm in _WEIGHT_FORMULAS:
        return {"weight": _with_dora(_WEIGHT_FORMULAS[algorithm], tensors)}
    weight_part, bias_part = ("diff", "diff_b") if algorithm == "full" else ("w_norm", "b_norm")
    deltas = {"weight": _additive(weight_part, tensors, algorithm)}
    if bias_part in tensors:
        deltas["bias"] = _additive(bias_part, tensors, algorithm)
    return deltas


__all__ = ["ModuleWeights", "algorithm_of", "parameter_deltas"]


def module_patches(
    parts: dict[str, torch.Tensor], params: Mapping[str, tuple[str, ...]], where: str
) -> list[WeightPatch]:
    """One weight patch per parameter a module's algorithm changes ("weight", "bias"), onto the
    parameter names `params` gives for each; `where` names the module in errors."""
    patches = []
    for suffix, delta in parameter_deltas(ModuleWeights(parts)).items():
        if suffix not in params:
            raise InvalidArgumentError(f"{where} changes a {suffix} that the module it maps to does not have")
        patches.append(WeightPatch(params[suffix], delta))
    return patches
