"""UNet of latent diffusion (Rombach et al. 2022), with the SDXL vector conditioning (Podell et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .blocks import (
    NORM_EPS,
    Downsample,
    InputConv,
    ResBlock,
    SpatialTransformer,
    TimestepEmbedSequential,
    Upsample,
    timestep_embedding,
)

SDXL_NUMBER_EMBED_DIM = 256


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of an ldm/sgm `UNetModel`; parameter names follow the original configs."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)
    transformer_depth_middle: int = 1
    num_heads: int = 8
    num_head_channels: int = -1
    context_dim: int = 768
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None
    norm_groups: int = 32

    def heads_at(self, channels: int) -> tuple[int, int]:
        """(heads, head_dim) of an attention layer with `channels` channels."""
        if self.num_head_channels > 0:
            return channels // self.num_head_channels, self.num_head_channels
        return self.num_heads, channels // self.num_heads


def _embedding_mlp(in_features: int, out_features: int) -> nn.Sequential:
    """Linear, SiLU, Linear: the ldm embedding MLP."""
    return nn.Sequential(
        nn.Linear(in_features, out_features), nn.SiLU(), nn.Linear(out_features, out_features)
    )


class UNetModel(nn.Module):
    """Conditional denoising UNet of latent diffusion (Rombach et al. 2022), ldm/sgm parameter layout.

    `forward(x, t, context, y)` predicts the model output (eps or v) for latents `x` at discrete
    timesteps `t`, cross-attending to `context`; `y` is the SDXL vector conditioning (Podell et al. 2023).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        levels = len(config.channel_mult)
        if len(config.transformer_depth) != levels:
            raise ValueError(
                f"transformer_depth has {len(config.transformer_depth)} entries and channel_mult {levels}; "
                "give one transformer depth per level"
            )
        self.config = config
        mc, groups = config.model_channels, config.norm_groups
        emb_channels = 4 * mc
        self.time_embed = _embedding_mlp(mc, emb_channels)
        if config.adm_in_channels is not None:
            self.label_emb = nn.Sequential(_embedding_mlp(config.adm_in_channels, emb_channels))

        def transformer(channels: int, depth: int) -> SpatialTransformer:
            heads, head_dim = config.heads_at(channels)
            return SpatialTransformer(
                channels, heads, head_dim, depth, config.context_dim, groups, config.use_linear_in_transformer
            )

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential([InputConv(config.in_channels, mc)])])
        skip_channels = [mc]
        channels = mc
        level_shapes = zip(config.channel_mult, config.transformer_depth, strict=True)
        for level, (mult, depth) in enumerate(level_shapes):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(channels, emb_channels, mult * mc, groups)]
                channels = mult * mc
                if depth > 0:
                    layers.append(transformer(channels, depth))
                self.input_blocks.append(TimestepEmbedSequential(layers))
                skip_channels.append(channels)
            if level != levels - 1:
                self.input_blocks.append(TimestepEmbedSequential([Downsample(channels)]))
                skip_channels.append(channels)

        middle: list[nn.Module] = [ResBlock(channels, emb_channels, channels, groups)]
        if config.transformer_depth_middle > 0:
            middle.append(transformer(channels, config.transformer_depth_middle))
        middle.append(ResBlock(channels, emb_channels, channels, groups))
        self.middle_block = TimestepEmbedSequential(middle)

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            mult, depth = config.channel_mult[level], config.transformer_depth[level]
            for index in range(config.num_res_blocks + 1):
                layers = [ResBlock(channels + skip_channels.pop(), emb_channels, mult * mc, groups)]
                channels = mult * mc
                if depth > 0:
                    layers.append(transformer(channels, depth))
                if level and index == config.num_res_blocks:
                    layers.append(Upsample(channels))
                self.output_blocks.append(TimestepEmbedSequential(layers))

        self.out = nn.Sequential(
            nn.GroupNorm(groups, channels, eps=NORM_EPS),
            nn.SiLU(inplace=True),
            nn.Conv2d(mc, config.out_channels, 3, padding=1),
        )

    def forward(self, x: Tensor, t: Tensor, context: Tensor, y: Tensor | None = None) -> Tensor:
        """Output for latents x (B, C, H, W), timesteps t (B,), context (B, T, D), vector y (B, adm)."""
        timesteps = t.reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))
        if self.config.adm_in_channels is not None:
            if y is None:
                adm = self.config.adm_in_channels
                raise ValueError(
                    f"this UNet needs a vector conditioning y of shape (batch, {adm}); "
                    "build it with sdxl_vector_conditioning(pooled, values)"
                )
            emb = emb + self.label_emb(y.to(emb.dtype))
        elif y is not None:
            raise ValueError("this UNet takes no vector conditioning y; pass y=None")
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            upsample_to = tuple(skips[-1].shape[-2:]) if isinstance(block[-1], Upsample) else None
            h = block(h, emb, context, upsample_to)
        return self.out(h)


def sdxl_vector_conditioning(pooled: Tensor, values: Tensor) -> Tensor:
    """SDXL vector y: pooled text embedding, then a 256-d sinusoidal embedding of each size/crop/score."""
    batch = values.shape[0]
    numbers = timestep_embedding(values.flatten(), SDXL_NUMBER_EMBED_DIM).reshape(batch, -1)
    return torch.cat([pooled, numbers.to(pooled.dtype)], dim=-1)
