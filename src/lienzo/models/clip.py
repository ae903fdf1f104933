"""CLIP text transformer (Radford et al. 2021), OpenAI and OpenCLIP variants, with optional text projection."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CLIPTextConfig:
    """Architecture of a CLIP text tower; parameter names follow transformers' `CLIPTextConfig`."""

    vocab_size: int = 49408
    max_position_embeddings: int = 77
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None
