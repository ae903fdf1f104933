"""UNet of latent diffusion (Rombach et al. 2022), with the SDXL vector conditioning (Podell et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass


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
