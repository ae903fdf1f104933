"""Trainable LoRA / LyCORIS modules: the low-rank parts of one layer under their kohya and LyCORIS names,
put over the layer's weight as a parametrization W' = W + delta(W), the delta computed by
lienzo.adapters.algorithms (the same formula that reads the saved file back). The base weight never changes.

Initialisation follows the trainers whose files these are: LoRA (Hu et al. 2021) down kaiming-uniform
(a = sqrt 5), up zeros (kohya); LoHa w1 ~ N(0, 0.1) x N(0, 1), w2_a zeros (LyCORIS); LoKr w1 and w2_a
kaiming-uniform, w2 (or w2_b) zeros (LyCORIS); DoRA magnitude = the norm of W's rows (Liu et al. 2024).
Every delta is zero before the first step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lienzo.adapters.algorithms import ModuleWeights, parameter_deltas
from lienzo.errors import InvalidArgumentError

NETWORKS = ("lora", "locon", "loha", "lokr", "dora")
ATTENTION_BLOCKS = ("SpatialTransformer",)
CONV_BLOCKS = ("ResBlock", "Downsample", "Upsample")
TEXT_BLOCKS = ("SelfAttention", "FeedForward")
"""kohya's targets: Transformer2DModel (here SpatialTransformer) linear and 1x1 conv layers, CLIPAttention
and CLIPMLP in the text encoder; LoCon, LoHa and LoKr add ResnetBlock2D, Downsample2D, Upsample2D convs."""


@dataclass(frozen=True)
class NetworkConfig:
    """Which algorithm, at which rank and alpha (None: alpha = rank, a scale of 1), over which layers."""

    network: str = "lora"
    rank: int = 4
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.network not in NETWORKS:
            raise InvalidArgumentError(
                f"unknown --network {self.network!r}; use one of: {', '.join(NETWORKS)}"
            )
        if self.rank < 1:
            raise InvalidArgumentError(f"--rank must be at least 1, got {self.rank}")
        if self.alpha is not None and self.alpha <= 0:
            raise InvalidArgumentError(f"--alpha must be above 0, got {self.alpha}")

    @property
    def scale_alpha(self) -> float:
        """The alpha written to the file (alpha / rank scales the delta)."""
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def covers_convs(self) -> bool:
        """True for the algorithms that also train the UNet's 3x3 convolutions."""
        return self.network in ("locon", "loha", "lokr")


def factorization(dimension: int) -> tuple[int, int]:
    """(m, n), m <= n, m * n = dimension, as close to square as possible (LyCORIS LoKr, factor -1)."""
    m = int(math.isqrt(dimension))
    while dimension % m:
        m -= 1
    return m, dimension // m


def _uniform(shape: tuple[int, ...]) -> nn.Parameter:
    tensor = torch.empty(shape)
    nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
    return nn.Parameter(tensor)


def _zeros(shape: tuple[int, ...]) -> nn.Parameter:
    return nn.Parameter(torch.zeros(shape))


def _normal(shape: tuple[int, ...], std: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape) * std)


class AdapterModule(nn.Module):
    """One layer's trainable parts; `parts()` gives them under the names an adapter file uses."""

    def __init__(self, config: NetworkConfig, weight: Tensor):
        super().__init__()
        out, inputs = weight.shape[0], weight.shape[1]
        kernel = tuple(weight.shape[2:])
        flat_in = inputs * math.prod(kernel)
        rank = min(config.rank, out, flat_in)
        self.params = nn.ParameterDict()
        self.names: dict[str, str] = {}
        algorithm = "lora" if config.network in ("locon", "dora") else config.network
        if algorithm == "lora":
            self._add("lora_down.weight", _uniform((rank, inputs, *kernel)))
            self._add("lora_up.weight", _zeros((out, rank, *(1 for _ in kernel))))
        elif algorithm == "loha":
            self._add("hada_w1_a", _normal((out, rank), 0.1))
            self._add("hada_w1_b", _normal((rank, flat_in), 1.0))
            self._add("hada_w2_a", _zeros((out, rank)))
            self._add("hada_w2_b", _normal((rank, flat_in), 1.0))
        else:
            (out_a, out_b), (in_a, in_b) = factorization(out), factorization(inputs)
            self._add("lokr_w1", _uniform((out_a, in_a)))
            in_flat = in_b * math.prod(kernel)
            if rank >= max(out_b, in_flat) / 2:
                self._add("lokr_w2", _zeros((out_b, in_b, *kernel)))
            else:
                self._add("lokr_w2_a", _uniform((out_b, rank)))
                self._add("lokr_w2_b", _zeros((rank, in_flat)))
        if config.network == "dora":
            axes = list(range(1, weight.dim()))
            norm = torch.linalg.vector_norm(weight.detach().float(), dim=axes, keepdim=True)
            self._add("dora_scale", nn.Parameter(norm.cpu()))
        self.register_buffer("alpha", torch.tensor(config.scale_alpha))

    def _add(self, part: str, param: nn.Parameter) -> None:
        key = part.replace(".", "_")
        self.params[key] = param
        self.names[part] = key

    def parts(self) -> dict[str, Tensor]:
        """The parts by file name (`lora_down.weight`, `hada_w1_a`, `lokr_w1`, `dora_scale`, `alpha`)."""
        return {part: self.params[key] for part, key in self.names.items()} | {"alpha": self.alpha}

    def delta(self, weight: Tensor) -> Tensor:
        """The weight change at strength 1 (adapters.algorithms), differentiable in the parts."""
        return parameter_deltas(ModuleWeights(self.parts()))["weight"](weight)


class AddDelta(nn.Module):
    """Parametrization W -> W + delta(W) of one adapter module."""

    def __init__(self, adapter: AdapterModule):
        super().__init__()
        self.adapter = adapter

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.adapter.delta(weight).to(weight.dtype)


def target_layers(model: nn.Module, blocks: tuple[str, ...], convs: bool) -> dict[str, nn.Module]:
    """The linear layers (and 1x1 convs, or every conv with `convs`) inside modules of the named classes."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if type(module).__name__ not in blocks:
            continue
        for child_name, child in module.named_modules():
            full = f"{name}.{child_name}" if name else child_name
            conv = isinstance(child, nn.Conv2d) and (convs or child.kernel_size == (1, 1))
            if isinstance(child, nn.Linear) or conv:
                found[full] = child
    return found


class AdapterNetwork(nn.Module):
    """Adapter modules over the layers of one network (UNet or text encoder); calling it runs that network
    with them (so DDP wraps only the adapters). `modules` maps each layer's name in the network to its
    adapter (names with "." spelled "__" inside the ModuleDict)."""

    def __init__(self, base: nn.Module, config: NetworkConfig, layers: dict[str, nn.Module]):
        super().__init__()
        if not layers:
            raise InvalidArgumentError(
                f"{type(base).__name__} has no layer a {config.network} network targets"
            )
        self.config = config
        self._base = (base,)
        self.adapters = nn.ModuleDict()
        device = next(base.parameters()).device
        for name, layer in layers.items():
            adapter = AdapterModule(config, layer.weight).to(device)
            self.adapters[name.replace(".", "__")] = adapter
            parametrize.register_parametrization(layer, "weight", AddDelta(adapter), unsafe=True)

    @property
    def base(self) -> nn.Module:
        """The network the adapters sit on."""
        return self._base[0]

    def named_adapters(self) -> dict[str, AdapterModule]:
        """Each adapter by its layer's name in the base network."""
        return {key.replace("__", "."): adapter for key, adapter in self.adapters.items()}

    def forward(self, *args, **kwargs):
        return self.base(*args, **kwargs)

    def remove(self) -> None:
        """Take the parametrizations out: the base layers get their original weight tensors back."""
        for name in self.named_adapters():
            parametrize.remove_parametrizations(
                self.base.get_submodule(name), "weight", leave_parametrized=False
            )


def unet_network(unet: nn.Module, config: NetworkConfig) -> AdapterNetwork:
    """Adapters over the UNet's attention-block layers (and its resnet/sampling convs for LoCon/LoHa/LoKr)."""
    layers = target_layers(unet, ATTENTION_BLOCKS, convs=False)
    if config.covers_convs:
        layers |= target_layers(unet, CONV_BLOCKS, convs=True)
    return AdapterNetwork(unet, config, dict(sorted(layers.items())))


def text_network(text_encoder: nn.Module, config: NetworkConfig) -> AdapterNetwork:
    """Adapters over the text encoder's attention and MLP linear layers."""
    return AdapterNetwork(text_encoder, config, target_layers(text_encoder, TEXT_BLOCKS, convs=False))
