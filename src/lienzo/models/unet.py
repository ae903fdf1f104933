"""UNet of latent diffusion (Rombach et al. 2022), with the SDXL vector conditioning (Podell et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lienzo.models.blocks import (
    NORM_EPS,
    Downsample,
    InputConv,
    ResBlock,
    SpatialTransformer,
    TimestepEmbedSequential,
    Upsample,
    timestep_embedding,
)
from lienzo.models.conditioning import Conditioning
from lienzo.models.feature_reuse import FeatureReuse
from lienzo.models.norms import GroupNorm
from lienzo.models.packed_conv import PackedConv2d


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
    addition_time_embed_dim: int = 256
    """Width of the sinusoidal embedding of each SDXL size/crop/score value in y (sgm: 256)."""

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


class UNetEncoder(nn.Module):
    """The encoder half of the ldm UNet: time (and vector) embedding, input blocks and middle block.

    The UNet extends it with the decoder half; a ControlNet (Zhang et al. 2023) builds the same blocks
    from the same config. Attribute names follow the ldm checkpoints (`time_embed`, `label_emb`,
    `input_blocks`, `middle_block`), so either loads its state dict as is.
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
        self.emb_channels = 4 * mc
        self.time_embed = _embedding_mlp(mc, self.emb_channels)
        if config.adm_in_channels is not None:
            self.label_emb = nn.Sequential(_embedding_mlp(config.adm_in_channels, self.emb_channels))

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential([InputConv(config.in_channels, mc)])])
        self.skip_channels = [mc]
        adapter_places = []
        channels = mc
        level_shapes = zip(config.channel_mult, config.transformer_depth, strict=True)
        for level, (mult, depth) in enumerate(level_shapes):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(channels, self.emb_channels, mult * mc, groups)]
                channels = mult * mc
                if depth > 0:
                    layers.append(self.transformer(channels, depth))
                self.input_blocks.append(TimestepEmbedSequential(layers))
                self.skip_channels.append(channels)
            adapter_places.append(len(self.input_blocks) - 1)
            if level != levels - 1:
                self.input_blocks.append(TimestepEmbedSequential([Downsample(channels)]))
                self.skip_channels.append(channels)
                if depth == 0:
                    adapter_places[-1] += 1
        self.adapter_places = tuple(adapter_places)
        """The input block after which each level's T2I-Adapter feature is added: the level's last
        block, or its downsampler in a level without attention (diffusers' DownBlock2D)."""

        middle: list[nn.Module] = [ResBlock(channels, self.emb_channels, channels, groups)]
        if config.transformer_depth_middle > 0:
            middle.append(self.transformer(channels, config.transformer_depth_middle))
        middle.append(ResBlock(channels, self.emb_channels, channels, groups))
        self.middle_block = TimestepEmbedSequential(middle)

    def transformer(self, channels: int, depth: int) -> SpatialTransformer:
        """A spatial transformer of `depth` blocks at a level with `channels` channels."""
        config = self.config
        heads, head_dim = config.heads_at(channels)
        return SpatialTransformer(
            channels,
            heads,
            head_dim,
            depth,
            config.context_dim,
            config.norm_groups,
            config.use_linear_in_transformer,
        )

    def embed(self, t: Tensor, y: Tensor | None, batch: int, dtype: torch.dtype) -> Tensor:
        """The timestep embedding of t (B,), plus the embedded vector y (B, adm) for SDXL-style models."""
        timesteps = t.reshape(-1).expand(batch)
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        if self.config.adm_in_channels is not None:
            if y is None:
                adm = self.config.adm_in_channels
                raise ValueError(
                    f"this UNet needs a vector conditioning y of shape (batch, {adm}); "
                    "build it with sdxl_vector_conditioning(pooled, values, dim)"
                )
            return emb + self.label_emb(y.to(emb.dtype))
        if y is not None:
            raise ValueError("this UNet takes no vector conditioning y; pass y=None")
        return emb

    def encode(
        self, h: Tensor, emb: Tensor, context: Tensor, adapter: tuple[Tensor, ...] = ()
    ) -> tuple[Tensor, list[Tensor]]:
        """(middle block output, skip connections) of the input h; `adapter` holds one T2I-Adapter
        feature per level, added to the hidden state at `adapter_places` (diffusers'
        down_intrablock_additional_residuals), so the skip there and every later block see it."""
        if adapter and len(adapter) != len(self.adapter_places):
            raise ValueError(
                f"T2I-Adapter residuals hold {len(adapter)} levels but this UNet has "
                f"{len(self.adapter_places)}; use a T2I-Adapter made for this model family"
            )
        features = dict(zip(self.adapter_places, adapter, strict=False))
        skips = []
        for index, block in enumerate(self.input_blocks):
            h = block(h, emb, context)
            if index in features:
                h = h + _fitting(features[index], h)
            skips.append(h)
        return self.middle_block(h, emb, context), skips


def _fitting(residual: Tensor, h: Tensor) -> Tensor:
    """`residual` in h's dtype, refused unless its channels and size are h's."""
    if residual.shape[1:] != h.shape[1:]:
        raise ValueError(
            f"a T2I-Adapter feature of shape {tuple(residual.shape[1:])} meets a UNet hidden state of "
            f"{tuple(h.shape[1:])}; use a T2I-Adapter made for this model family"
        )
    return residual.to(h.dtype)


def _with_residuals(skips: list[Tensor], residuals: tuple[Tensor, ...]) -> list[Tensor]:
    """Each skip connection plus its ControlNet residual, in the skip's dtype."""
    return [skip + residual.to(skip.dtype) for skip, residual in zip(skips, residuals, strict=True)]


def with_concat(x: Tensor, cond: Conditioning) -> Tensor:
    """x with the conditioning's extra input channels appended (a batch of 1 repeats for every row)."""
    if cond.concat is None:
        return x
    extra = cond.concat.to(device=x.device, dtype=x.dtype)
    return torch.cat([x, extra.expand(x.shape[0], *extra.shape[1:])], dim=1)


class UNetModel(UNetEncoder):
    """Conditional denoising UNet of latent diffusion (Rombach et al. 2022), ldm/sgm parameter layout.

    `forward(x, t, cond)` predicts the model output (eps or v) for latents `x` at discrete timesteps `t`:
    `cond.concat` is appended to x's channels, the blocks cross-attend to `cond.context`, `cond.y` is the
    SDXL vector conditioning (Podell et al. 2023), and `cond.control` residuals are added to the skip
    connections and after the middle block, as ControlNet prescribes (Zhang et al. 2023), and inside the
    encoder at `adapter_places`, as T2I-Adapter does (Mou et al. 2023).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(config)
        mc, groups, levels = config.model_channels, config.norm_groups, len(config.channel_mult)
        skip_channels = list(self.skip_channels)
        channels = skip_channels[-1]
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            mult, depth = config.channel_mult[level], config.transformer_depth[level]
            for index in range(config.num_res_blocks + 1):
                layers = [ResBlock(channels + skip_channels.pop(), self.emb_channels, mult * mc, groups)]
                channels = mult * mc
                if depth > 0:
                    layers.append(self.transformer(channels, depth))
                if level and index == config.num_res_blocks:
                    layers.append(Upsample(channels))
                self.output_blocks.append(TimestepEmbedSequential(layers))

        self.out = nn.Sequential(
            GroupNorm(groups, channels, eps=NORM_EPS),
            nn.SiLU(inplace=True),
            PackedConv2d(mc, config.out_channels, 3, padding=1),
        )

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning, reuse: FeatureReuse | None = None) -> Tensor:
        """Output for latents x (B, C, H, W) at timesteps t (B,) under `cond`; with `reuse`, DeepCache's
        feature reuse (Ma et al. 2023, see FeatureReuse)."""
        emb = self.embed(t, cond.y, x.shape[0], x.dtype)
        if reuse is not None and reuse.usable(x):
            return self._shallow_forward(x, emb, cond, reuse)
        control = cond.control
        adapter = () if control is None else control.encoder
        h, skips = self.encode(with_concat(x, cond), emb, cond.context, adapter)
        if control is not None:
            if control.skips:
                if len(control.skips) != len(skips):
                    raise ValueError(
                        f"control residuals hold {len(control.skips)} skips but this UNet has {len(skips)}; "
                        "use a ControlNet made for this model family"
                    )
                skips = _with_residuals(skips, control.skips)
            if control.middle is not None:
                h = h + control.middle.to(h.dtype)
        if reuse is not None:
            reuse.full_calls += 1
            return self._decode(h, skips, emb, cond.context, reuse=reuse, latent=x)
        return self._decode(h, skips, emb, cond.context)

    def _decode(
        self,
        h: Tensor,
        skips: list[Tensor],
        emb: Tensor,
        context: Tensor,
        first: int = 0,
        reuse: FeatureReuse | None = None,
        latent: Tensor | None = None,
    ) -> Tensor:
        """The output blocks from `first` on, each taking the last of `skips`; with `reuse`, the hidden
        state entering the block that takes skip `reuse.branch` is kept."""
        keep_at = None if reuse is None else len(self.output_blocks) - 1 - reuse.branch
        for index in range(first, len(self.output_blocks)):
            if index == keep_at:
                reuse.keep(h, latent)
            block = self.output_blocks[index]
            h = torch.cat([h, skips.pop()], dim=1)
            upsample_to = tuple(skips[-1].shape[-2:]) if isinstance(block[-1], Upsample) else None
            h = block(h, emb, context, upsample_to)
        return self.out(h)

    def _shallow_forward(self, x: Tensor, emb: Tensor, cond: Conditioning, reuse: FeatureReuse) -> Tensor:
        """A DeepCache step: input blocks 0..branch (plus their ControlNet residuals), then the output
        blocks from the one taking skip `branch`, on the kept deep features."""
        if reuse.branch >= self.config.num_res_blocks:
            raise ValueError(
                f"feature reuse branch {reuse.branch} lies past the first level's blocks; use 0 to "
                f"{self.config.num_res_blocks - 1}"
            )
        h, skips = with_concat(x, cond), []
        for block in self.input_blocks[: reuse.branch + 1]:
            h = block(h, emb, cond.context)
            skips.append(h)
        control = cond.control
        if control is not None and control.skips:
            skips = _with_residuals(skips, control.skips[: len(skips)])
        reuse.shallow_calls += 1
        first = len(self.output_blocks) - 1 - reuse.branch
        return self._decode(reuse.kept_rows(x.shape[0]), skips, emb, cond.context, first)


def sdxl_vector_conditioning(pooled: Tensor, values: Tensor, dim: int) -> Tensor:
    """SDXL vector y: pooled text embedding, then a `dim`-wide sinusoidal embedding of each
    size/crop/score value (the UNet config's `addition_time_embed_dim`)."""
    batch = values.shape[0]
    numbers = timestep_embedding(values.flatten(), dim).reshape(batch, -1)
    return torch.cat([pooled, numbers.to(pooled.dtype)], dim=-1)
