"""Cross-attention capture for per-word maps, after DAAM (Tang et al. 2023, "What the DAAM").

While `capture_cross_attention` is open, a forward hook on every cross-attention layer (each transformer
block's `attn2`) recomputes the scores q k^T / sqrt(d) for the first batch row (the conditional half of a
CFG batch, or the whole batch without guidance), or their softmax, and adds them, averaged over heads,
into a running sum per feature-map size. A pre-hook on the UNet reads each call's timestep, so calls
above `MapSettings.max_timestep` (the noisy start, before the layout settles) can be left out. The
layer's own output still comes from scaled dot-product attention and is not touched, so the image is the
same with capture on or off; outside the block no hook is installed.

`MapSettings` says how the sums become maps: which layers (feature maps at least `min_map_side` cells on
their shorter side), how layers of different resolution are weighted, whether each position's start-token
share is removed, and how each layer's grid is upsampled to the image, cell centres placed where the VAE
encoder's and the UNet's stride-2 convolutions put them. docs/xray.md gives the measurements behind the
defaults.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lienzo.errors import InvalidArgumentError
from lienzo.models.blocks import BasicTransformerBlock, CrossAttention
from lienzo.text.conditioning import CHUNK_LENGTH

LAYER_WEIGHTINGS = ("equal", "cells")
SCORES = ("logit", "probability")
UPSAMPLINGS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class MapSettings:
    """How cross-attention becomes word maps.

    score: "logit" averages the query-key scores q k^T / sqrt(d) (the softmax's inputs) of each word's key;
        "probability" averages the softmax's probabilities, as DAAM does. In the softmax the prompt's tokens
        compete for every position: where the colour word takes most of the attention the shape word's share
        falls, so its probability map rings its object; the scores measure each word's match alone.
    min_map_side: keep layers whose feature map is at least this many cells on its shorter side (the finest
        layers are always kept); 1 keeps every layer, as DAAM does.
    layer_weighting: "equal" averages every kept layer call alike; "cells" weights a layer by its number of
        cells, so finer layers count more.
    later_fraction: aggregate the sampler calls of the last `later_fraction` of the steps (1 = all, as DAAM;
        0.5 = the later, low-noise half, where the layout has settled).
    drop_start_token: remove each position's start-token share and renormalise the rest to 1 before
        aggregating (the start token soaks up attention that says nothing about where a word acts).
    upsampling: "bilinear" or "bicubic" interpolation from each layer's native grid.
    """

    score: str = "logit"
    min_map_side: int = 8
    layer_weighting: str = "equal"
    later_fraction: float = 0.5
    drop_start_token: bool = False
    upsampling: str = "bicubic"

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise InvalidArgumentError(f"unknown score {self.score!r}; use one of {', '.join(SCORES)}")
        if self.drop_start_token and self.score != "probability":
            raise InvalidArgumentError(
                "drop_start_token renormalises probabilities: use it with score='probability'"
            )
        if self.min_map_side < 1:
            raise InvalidArgumentError(f"min_map_side must be 1 or more cells, got {self.min_map_side}")
        if self.layer_weighting not in LAYER_WEIGHTINGS:
            raise InvalidArgumentError(
                f"unknown layer weighting {self.layer_weighting!r}; use one of {', '.join(LAYER_WEIGHTINGS)}"
            )
        if not 0 < self.later_fraction <= 1:
            raise InvalidArgumentError(f"later_fraction must lie in (0, 1], got {self.later_fraction}")
        if self.upsampling not in UPSAMPLINGS:
            raise InvalidArgumentError(
                f"unknown upsampling {self.upsampling!r}; use one of {', '.join(UPSAMPLINGS)}"
            )

    def max_timestep(self, timesteps: list[float]) -> float:
        """The highest model timestep aggregated, given the run's timestep per step (decreasing)."""
        if not timesteps:
            return math.inf
        first = len(timesteps) - max(1, math.ceil(len(timesteps) * self.later_fraction))
        return math.inf if first == 0 else float(timesteps[first]) + 1e-3


def cross_attention_layers(unet: nn.Module) -> list[CrossAttention]:
    """The UNet's cross-attention layers (the `attn2` of every transformer block), in module order."""
    return [module.attn2 for module in unet.modules() if isinstance(module, BasicTransformerBlock)]


def feature_size(tokens: int, latent_size: tuple[int, int]) -> tuple[int, int, int]:
    """(height, width, factor) of a feature map of `tokens` pixels at a power-of-two downsampling `factor`
    of the latent (sizes rounded up, as strided convolutions round them)."""
    height, width = latent_size
    factor = 1
    while factor <= max(height, width):
        size = (math.ceil(height / factor), math.ceil(width / factor))
        if size[0] * size[1] == tokens:
            return size[0], size[1], factor
        factor *= 2
    raise ValueError(f"{tokens} attention queries fit no downsampling of a {height}x{width} latent")


def encoder_origin(stride: int) -> float:
    """Pixel index of latent cell 0's centre for a VAE encoder that downsamples by `stride` (ldm's): each of
    its stride-2 convolutions pads right and bottom only, so output cell j is centred on input cell 2j + 1,
    and latent cell i on pixel stride * i + stride - 1 (8 i + 7 for SD's and the built-in model's VAE)."""
    return stride - 1.0


def cell_centres(cells: int, factor: int, pixels: int, latent: int, origin: float | None = None) -> Tensor:
    """Each image pixel's coordinate on a grid of `cells`, normalised for grid_sample (align_corners=True).
    The UNet's stride-2, padding-1 convolutions centre output cell j on input cell 2j, so cell j of a grid
    `factor` times coarser than the latent sits on latent cell factor * j; latent cell i sits on pixel
    `origin` + stride * i (`encoder_origin` unless given)."""
    stride = pixels / latent
    origin = encoder_origin(round(stride)) if origin is None else origin
    latent_coordinate = (torch.arange(pixels, dtype=torch.float32) - origin) / stride
    grid_coordinate = latent_coordinate / factor
    return grid_coordinate * 2 / max(cells - 1, 1) - 1


def upsample(
    grid: Tensor,
    factor: int,
    size: tuple[int, int],
    latent_size: tuple[int, int],
    mode: str,
    origin: float | None = None,
) -> Tensor:
    """(channels, rows, columns) maps resampled to (channels, height, width) image pixels, each cell's value
    at its centre (`cell_centres`), edges held beyond the outermost centres."""
    channels, rows, columns = grid.shape
    ys = cell_centres(rows, factor, size[0], latent_size[0], origin).to(grid.device)
    xs = cell_centres(columns, factor, size[1], latent_size[1], origin).to(grid.device)
    sample_at = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
    padded = grid[None]
    if rows == 1 or columns == 1:
        padded = padded.expand(1, channels, max(rows, 2), max(columns, 2))
    resampled = F.grid_sample(padded, sample_at, mode=mode, padding_mode="border", align_corners=True)
    return resampled[0]


@dataclass
class AttentionCapture:
    """Running sums of head-averaged cross-attention scores or probabilities per feature-map size, the number
    of layer calls summed into each (`calls`), and the timestep of the UNet call under way."""

    latent_size: tuple[int, int]
    settings: MapSettings = field(default_factory=MapSettings)
    max_timestep: float = math.inf
    sums: dict[tuple[int, int, int], Tensor] = field(default_factory=dict)
    calls: dict[tuple[int, int, int], int] = field(default_factory=dict)
    timestep: float = 0.0

    def start_call(self, module: nn.Module, inputs: tuple) -> None:
        """UNet forward pre-hook: note the call's timestep (the conditional row's)."""
        self.timestep = float(inputs[1].reshape(-1)[0])

    def record(self, module: CrossAttention, inputs: tuple, output: Tensor) -> None:
        """Forward hook: add this call's scores or probabilities (first batch row) to the sums."""
        if self.timestep > self.max_timestep:
            return
        x, context = inputs[0][:1], inputs[1][:1]
        keys = context
        for patch in module.context_patches:
            keys, _ = patch(keys, keys)
        q = module.to_q(x).float().unflatten(-1, (module.heads, -1)).transpose(1, 2)
        k = module.to_k(keys).float().unflatten(-1, (module.heads, -1)).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        if self.settings.score == "probability":
            scores = torch.softmax(scores, dim=-1)
        averaged = scores.mean(dim=1)[0]
        if self.settings.drop_start_token:
            averaged = averaged.clone()
            averaged[:, ::CHUNK_LENGTH] = 0
            averaged = averaged / averaged.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        size = feature_size(averaged.shape[0], self.latent_size)
        total = self.sums.get(size)
        self.sums[size] = averaged if total is None else total + averaged
        self.calls[size] = self.calls.get(size, 0) + 1

    def kept_sizes(self) -> list[tuple[int, int, int]]:
        """The feature-map sizes the maps average: shorter side at least min_map_side, or the finest."""
        floor = min(self.settings.min_map_side, max(min(size[:2]) for size in self.sums))
        return [size for size in self.sums if min(size[:2]) >= floor]

    def token_maps(self, height: int, width: int) -> Tensor:
        """(tokens, height, width) float32 maps: the kept layers' scores or probabilities upsampled to the
        image size and averaged over heads, layers (weighted as the settings say) and sampler calls."""
        if not self.sums:
            raise ValueError("no cross-attention was captured: run the model inside capture_cross_attention")
        maps, total = None, 0.0
        for size in self.kept_sizes():
            rows, columns, factor = size
            weight = rows * columns if self.settings.layer_weighting == "cells" else 1
            grid = self.sums[size].transpose(0, 1).reshape(-1, rows, columns)
            upsampled = upsample(grid, factor, (height, width), self.latent_size, self.settings.upsampling)
            maps = weight * upsampled if maps is None else maps + weight * upsampled
            total += weight * self.calls[size]
        return maps / total


@contextlib.contextmanager
def capture_cross_attention(
    unet: nn.Module,
    latent_size: tuple[int, int],
    settings: MapSettings | None = None,
    max_timestep: float = math.inf,
) -> Iterator[AttentionCapture]:
    """Hooks on the UNet and its cross-attention layers while the block runs; they are removed on exit.
    Calls at timesteps above `max_timestep` are not recorded."""
    capture = AttentionCapture(latent_size, settings or MapSettings(), max_timestep)
    handles = [unet.register_forward_pre_hook(capture.start_call)]
    handles += [layer.register_forward_hook(capture.record) for layer in cross_attention_layers(unet)]
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()
