"""DPT monocular depth estimation (Ranftl et al. 2021, "Vision Transformers for Dense Prediction"; MiDaS v3).

A ViT encoder (optionally on a BiT ResNet stem: DPT-Hybrid), a reassemble stage turning four token maps
into an image pyramid, RefineNet-style fusion and a convolutional head giving relative inverse depth.
Module names follow transformers' `DPTForDepthEstimation` keys, so its weights load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lienzo.errors import InvalidArgumentError
from lienzo.models.attention import attention
from lienzo.models.bit import BiTBackbone, BiTConfig

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
READOUTS = ("ignore", "add", "project")


@dataclass(frozen=True)
class DPTConfig:
    """Architecture of a DPT depth estimator; field names follow transformers' `DPTConfig`.

    `backbone` set means DPT-Hybrid: the BiT stem's stages replace the first `len(neck_ignore_stages)`
    token maps and its last stage, projected, is the ViT's input.
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    image_size: tuple[int, int] = (384, 384)
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    backbone_out_indices: tuple[int, ...] = (2, 5, 8, 11)
    readout_type: str = "project"
    reassemble_factors: tuple[float, ...] = (4, 2, 1, 0.5)
    neck_hidden_sizes: tuple[int, ...] = (96, 192, 384, 768)
    fusion_hidden_size: int = 256
    head_in_index: int = -1
    use_batch_norm_in_fusion_residual: bool = False
    use_bias_in_fusion_residual: bool | None = None
    add_projection: bool = False
    neck_ignore_stages: tuple[int, ...] = ()
    backbone: BiTConfig | None = None

    def __post_init__(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise InvalidArgumentError(
                f"DPT hidden_act {self.hidden_act!r} is not supported; use one of {', '.join(ACTIVATIONS)}"
            )
        if self.readout_type not in READOUTS:
            raise InvalidArgumentError(
                f"DPT readout_type {self.readout_type!r} is unknown; use one of {', '.join(READOUTS)}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid of the training image size (rows, columns) the position embeddings were made for."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size


def resize_positions(positions: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """The position embeddings (1, 1 + h*w, D) bilinearly resized to a (rows, columns) token grid."""
    width = positions.shape[-1]
    table = positions[0, 1:].reshape(1, *grid, width).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=size, mode="bilinear").permute(0, 2, 3, 1).reshape(1, -1, width)
    return torch.cat([positions[:, :1], table], dim=1)


class PatchProjection(nn.Module):
    """Non-overlapping patches to tokens with one strided convolution."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(x)


class ViTEmbeddings(nn.Module):
    """[CLS] plus patch tokens plus (resized) learned positions; DPT-Hybrid takes its patches from BiT."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.config = config
        rows, columns = config.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, rows * columns + 1, config.hidden_size))
        if config.backbone is None:
            self.patch_embeddings = PatchProjection(config)
        else:
            self.backbone = BiTBackbone(config.backbone)
            self.projection = nn.Conv2d(config.backbone.stage_channels[-1], config.hidden_size, 1)

    def forward(self, pixels: Tensor) -> tuple[Tensor, list[Tensor], tuple[int, int]]:
        """Tokens (B, 1 + h*w, D), the BiT stages kept as features (hybrid only) and the grid (h, w)."""
        if self.config.backbone is None:
            patches, stages = self.patch_embeddings(pixels), []
        else:
            *stages, last = self.backbone(pixels)
            patches = self.projection(last)
        grid = (patches.shape[2], patches.shape[3])
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens + resize_positions(self.position_embeddings, self.config.grid, grid), stages, grid


class SelfAttention(nn.Module):
    """Multi-head self-attention projections (Vaswani et al. 2017), through SDPA."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        width = config.hidden_size
        self.query = nn.Linear(width, width, bias=config.qkv_bias)
        self.key = nn.Linear(width, width, bias=config.qkv_bias)
        self.value = nn.Linear(width, width, bias=config.qkv_bias)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        attended = attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return attended.transpose(1, 2).reshape(batch, length, width)


class Dense(nn.Module):
    """One linear layer under the name `dense`, as transformers' ViT output layers are keyed."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.dense = nn.Linear(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense(x)


class Attention(nn.Module):
    """Self-attention followed by its output projection."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.output = Dense(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.attention(x))


class ViTLayer(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Dense(config.hidden_size, config.intermediate_size)
        self.output = Dense(config.intermediate_size, config.hidden_size)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.activation = ACTIVATIONS[config.hidden_act]()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output(self.activation(self.intermediate(self.layernorm_after(x))))


class ViTEncoder(nn.Module):
    """The transformer layers."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.layer = nn.ModuleList(ViTLayer(config) for _ in range(config.num_hidden_layers))


class ViT(nn.Module):
    """Embeddings and transformer layers, returning the token maps DPT reads."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.config = config
        self.embeddings = ViTEmbeddings(config)
        self.encoder = ViTEncoder(config)

    def forward(self, pixels: Tensor) -> tuple[list[Tensor], tuple[int, int]]:
        """The BiT stages (hybrid) then the outputs of the layers in `backbone_out_indices`, and the grid."""
        x, features, grid = self.embeddings(pixels)
        wanted = self.config.backbone_out_indices[len(features) :]
        for index, layer in enumerate(self.encoder.layer[: max(wanted) + 1]):
            x = layer(x)
            if index in wanted:
                features.append(x)
        return features, grid


class ReassembleLayer(nn.Module):
    """1x1 projection to the stage's width, then resampling by `factor` (transposed conv up, strided down)."""

    def __init__(self, config: DPTConfig, channels: int, factor: float):
        super().__init__()
        self.projection = nn.Conv2d(config.hidden_size, channels, 1)
        if factor > 1:
            self.resize = nn.ConvTranspose2d(channels, channels, int(factor), stride=int(factor))
        elif factor == 1:
            self.resize = nn.Identity()
        else:
            self.resize = nn.Conv2d(channels, channels, 3, stride=int(1 / factor), padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.resize(self.projection(x))


class ReassembleStage(nn.Module):
    """Token maps to feature maps: fold in [CLS] by the readout, reshape to the grid, project and resample.

    Stages listed in `neck_ignore_stages` (DPT-Hybrid's BiT feature maps) pass through unchanged.
    """

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList()
        self.readout_projects = nn.ModuleList()
        for index, (channels, factor) in enumerate(
            zip(config.neck_hidden_sizes, config.reassemble_factors, strict=True)
        ):
            kept = index not in config.neck_ignore_stages
            self.layers.append(ReassembleLayer(config, channels, factor) if kept else nn.Identity())
            if config.readout_type == "project":
                project = nn.Sequential(
                    nn.Linear(2 * config.hidden_size, config.hidden_size), ACTIVATIONS[config.hidden_act]()
                )
                self.readout_projects.append(project if kept else nn.Identity())

    def forward(self, features: list[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        out = []
        for index, x in enumerate(features):
            if index not in self.config.neck_ignore_stages:
                cls, tokens = x[:, 0], x[:, 1:]
                if self.config.readout_type == "project":
                    joined = torch.cat([tokens, cls[:, None].expand_as(tokens)], dim=-1)
                    tokens = self.readout_projects[index](joined)
                elif self.config.readout_type == "add":
                    tokens = tokens + cls[:, None]
                x = self.layers[index](tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid))
            out.append(x)
        return out


class PreActResidual(nn.Module):
    """RefineNet's residual conv unit: x + conv(relu(conv(relu(x)))), optionally batch-normed."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        width = config.fusion_hidden_size
        norm = config.use_batch_norm_in_fusion_residual
        bias = config.use_bias_in_fusion_residual
        bias = not norm if bias is None else bias
        self.convolution1 = nn.Conv2d(width, width, 3, padding=1, bias=bias)
        self.convolution2 = nn.Conv2d(width, width, 3, padding=1, bias=bias)
        self.batch_norm1 = nn.BatchNorm2d(width) if norm else nn.Identity()
        self.batch_norm2 = nn.BatchNorm2d(width) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.batch_norm1(self.convolution1(F.relu(x)))
        return x + self.batch_norm2(self.convolution2(F.relu(y)))


class FusionLayer(nn.Module):
    """Fusion block: add the refined skip feature, refine, upsample 2x (align_corners) and project 1x1."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        width = config.fusion_hidden_size
        self.projection = nn.Conv2d(width, width, 1)
        self.residual_layer1 = PreActResidual(config)
        self.residual_layer2 = PreActResidual(config)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            if skip.shape != x.shape:
                skip = F.interpolate(skip, size=x.shape[2:], mode="bilinear", align_corners=False)
            x = x + self.residual_layer1(skip)
        x = self.residual_layer2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.projection(x)


class FusionStage(nn.Module):
    """Fusion from the coarsest feature map to the finest."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.layers = nn.ModuleList(FusionLayer(config) for _ in config.neck_hidden_sizes)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        fused, x = [], None
        for feature, layer in zip(reversed(features), self.layers, strict=True):
            x = layer(feature) if x is None else layer(x, feature)
            fused.append(x)
        return fused


class Neck(nn.Module):
    """Reassemble, a 3x3 convolution to the fusion width per level, and fusion."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.reassemble_stage = ReassembleStage(config)
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, config.fusion_hidden_size, 3, padding=1, bias=False)
            for channels in config.neck_hidden_sizes
        )
        self.fusion_stage = FusionStage(config)

    def forward(self, features: list[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        maps = self.reassemble_stage(features, grid)
        return self.fusion_stage([conv(x) for conv, x in zip(self.convs, maps, strict=True)])


class DepthHead(nn.Module):
    """conv 3x3 (half width), upsample 2x, conv 3x3 to 32, ReLU, conv 1x1 to 1, ReLU: inverse depth >= 0."""

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.config = config
        width = config.fusion_hidden_size
        self.projection = nn.Conv2d(256, 256, 3, padding=1) if config.add_projection else None
        self.head = nn.Sequential(
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(width // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
            nn.ReLU(),
        )

    def forward(self, fused: list[Tensor]) -> Tensor:
        x = fused[self.config.head_in_index]
        if self.projection is not None:
            x = F.relu(self.projection(x))
        return self.head(x)[:, 0]


class DPTDepthEstimator(nn.Module):
    """DPT for depth: pixels (B, 3, H, W), normalised as its image processor says, to depth (B, H', W').

    With 16-pixel patches and the usual reassemble factors (4, 2, 1, 0.5) H' = H and W' = W; larger
    values are nearer (relative inverse depth).
    """

    def __init__(self, config: DPTConfig):
        super().__init__()
        self.config = config
        self.dpt = ViT(config)
        self.neck = Neck(config)
        self.head = DepthHead(config)

    @property
    def device(self) -> torch.device:
        return self.head.head[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.head[0].weight.dtype

    def forward(self, pixels: Tensor) -> Tensor:
        """Predicted relative inverse depth (B, H', W')."""
        features, grid = self.dpt(pixels)
        return self.head(self.neck(features, grid))
