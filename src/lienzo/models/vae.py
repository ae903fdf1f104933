"""AutoencoderKL of latent diffusion (Rombach et al. 2022): encoder to a diagonal Gaussian, decoder."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of an ldm `AutoencoderKL`; parameter names follow the original configs."""

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    norm_groups: int = 32
    scaling_factor: float = 0.18215
