"""A1111 hypernetworks: small networks that transform what attention layers read for keys and values.

A hypernetwork (AUTOMATIC1111's, after NovelAI's 2022 design) holds, for each width w it was trained on, a
pair of networks (HN_k, HN_v), each y = x + m · MLP(x) with m its multiplier (strength). In every attention
layer whose key/value source has width w, the source s (the text context for cross-attention, the hidden
states x for self-attention) becomes k = to_k(HN_k(s)) and v = to_v(HN_v(s)); the query is untouched. So on
SD 1.x the 768 pair acts on cross-attention and the 320/640/1280 pairs on self-attention (1024 on SD 2).
Several hypernetworks chain: each transforms the k and v sources the previous one gave.

Applied as hooks (`HypernetworkPatch`) that `ModelPatcher.add_hooks` installs in its own view's attention
modules; the model's code is not forked, and without hooks it runs exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lienzo.errors import InvalidArgumentError
from lienzo.models.blocks import CrossAttention

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "rrelu": nn.RReLU,
    "hardtanh": nn.Hardtanh,
    "relu6": nn.ReLU6,
    "hardsigmoid": nn.Hardsigmoid,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "hardswish": nn.Hardswish,
    "celu": nn.CELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "hardshrink": nn.Hardshrink,
    "logsigmoid": nn.LogSigmoid,
    "softplus": nn.Softplus,
    "softshrink": nn.Softshrink,
    "prelu": nn.PReLU,
    "softsign": nn.Softsign,
    "tanhshrink": nn.Tanhshrink,
}
"""A1111's activation names (its table plus torch.nn's activation classes by lower-case name), each with
torch's default arguments. Note A1111's "swish" is Hardswish, not SiLU."""
REFUSED_ACTIVATIONS = {
    "softmax",
    "softmin",
    "logsoftmax",
    "softmax2d",
    "glu",
    "threshold",
    "multiheadattention",
}
"""Names A1111's table also holds that lienzo refuses: built without arguments, the softmax family normalizes
over the batch (so an image would depend on what it is batched with) and the others cannot run at all."""


class HypernetworkModule(nn.Module):
    """One k or v network: y = x + m · linear(x), `linear` being A1111's Sequential of Linear layers, their
    activations and LayerNorms (its dropout is off at inference and left out)."""

    def __init__(self, linear: nn.Sequential) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: Tensor, multiplier: float = 1.0) -> Tensor:
        return torch.add(x, self.linear(x), alpha=multiplier)


def hypernetwork_module(
    linears: Sequence[tuple[Tensor, Tensor]],
    norms: Sequence[tuple[Tensor, Tensor] | None],
    activated: Sequence[bool],
    activation: str,
    activation_weights: Sequence[Tensor | None] = (),
    source: str = "hypernetwork",
) -> HypernetworkModule:
    """A network from its layers in order: each Linear (weight, bias), then the activation when
    `activated`, then its LayerNorm (weight, bias) when given (A1111's order)."""
    factory = activation_factory(activation, source)
    weights = list(activation_weights) or [None] * len(linears)
    layers: list[nn.Module] = []
    for (weight, bias), norm, active, extra in zip(linears, norms, activated, weights, strict=True):
        linear = nn.Linear(weight.shape[1], weight.shape[0], device="meta")
        layers.append(_assigned(linear, {"weight": weight, "bias": bias}))
        if active:
            module = factory()
            layers.append(_assigned(module, {"weight": extra}) if extra is not None else module)
        if norm is not None:
            layer_norm = nn.LayerNorm(norm[0].shape[0], device="meta")
            layers.append(_assigned(layer_norm, {"weight": norm[0], "bias": norm[1]}))
    return HypernetworkModule(nn.Sequential(*layers)).eval().requires_grad_(False)


def activation_factory(name: str, source: str = "hypernetwork") -> Callable[[], nn.Module]:
    """The module class of an A1111 activation name; unknown and batch-dependent ones are refused."""
    factory = ACTIVATIONS.get(name.lower())
    if factory is None:
        reason = (
            "refused: built without arguments, as A1111 builds it, it normalizes over the batch or cannot run"
            if name.lower() in REFUSED_ACTIVATIONS
            else "unknown"
        )
        raise InvalidArgumentError(
            f"{source}: activation_func {name!r} is {reason}; hypernetworks with {', '.join(ACTIVATIONS)} run"
        )
    return factory


def _assigned(module: nn.Module, tensors: Mapping[str, Tensor]) -> nn.Module:
    """`module` (built on the meta device) with `tensors` as its parameters."""
    module.load_state_dict(dict(tensors), strict=True, assign=True)
    return module


class Hypernetwork(nn.Module):
    """A hypernetwork's (k, v) networks by width."""

    def __init__(self, layers: Mapping[int, tuple[HypernetworkModule, HypernetworkModule]]) -> None:
        super().__init__()
        pairs = {str(width): nn.ModuleList(pair) for width, pair in sorted(layers.items())}
        self.pairs = nn.ModuleDict(pairs)
        self.eval().requires_grad_(False)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(width) for width in self.pairs)

    def pair(self, width: int) -> tuple[HypernetworkModule, HypernetworkModule] | None:
        """The (k, v) networks for sources of this width, or None."""
        pair = self.pairs[str(width)] if str(width) in self.pairs else None
        return None if pair is None else (pair[0], pair[1])


@dataclass(frozen=True, eq=False)
class HypernetworkPatch:
    """The hook one attention layer runs: its width's k and v networks at a strength."""

    k: HypernetworkModule
    v: HypernetworkModule
    strength: float = 1.0

    def __call__(self, k_source: Tensor, v_source: Tensor) -> tuple[Tensor, Tensor]:
        return self.k(k_source, self.strength), self.v(v_source, self.strength)


def attention_widths(model: nn.Module) -> tuple[int, ...]:
    """The widths of what the model's attention layers read for keys and values."""
    return tuple(
        sorted({module.to_k.in_features for module in model.modules() if isinstance(module, CrossAttention)})
    )


def attention_hooks(
    model: nn.Module, hypernetwork: Hypernetwork, strength: float = 1.0
) -> dict[str, HypernetworkPatch]:
    """{attention module name: patch} for every attention layer of `model` whose key/value source has a
    width the hypernetwork has (the width is fixed per layer, so choosing here is choosing per call)."""
    hooks = {}
    for name, module in model.named_modules():
        if isinstance(module, CrossAttention):
            pair = hypernetwork.pair(module.to_k.in_features)
            if pair is not None:
                hooks[name] = HypernetworkPatch(*pair, strength=float(strength))
    return hooks
