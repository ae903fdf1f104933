"""CLIP vision transformer (Radford et al. 2021; ViT, Dosovitskiy et al. 2021) with transformers' keys."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lienzo.models.clip import Encoder


@dataclass(frozen=True)
class CLIPVisionConfig:
    """A CLIP image tower's architecture; names and defaults follow transformers' `CLIPVisionConfig`."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


class VisionEmbeddings(nn.Module):
    """A class token and the patch tokens of a strided convolution, plus learned positions."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        width = config.hidden_size
        positions = (config.image_size // config.patch_size) ** 2 + 1
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, width, config.patch_size, stride=config.patch_size, bias=False
        )
        self.position_embedding = nn.Embedding(positions, width)

    def forward(self, pixels: Tensor) -> Tensor:
        """(B, 1 + patches, D) tokens of (B, C, image_size, image_size) pixels."""
        patches = (
            self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        )
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class VisionTransformer(nn.Module):
    """Embeddings, pre-layernorm, encoder and the post-layernorm of the pooled class token."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.embeddings = VisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = Encoder(config, causal=False)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixels: Tensor) -> Tensor:
        """The pooled output: the post-layernormed class token of the last layer, (B, D)."""
        x = self.pre_layrnorm(self.embeddings(pixels))
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x[:, 0])


class CLIPVisionModel(nn.Module):
    """CLIP image tower under transformers' `CLIPVisionModel` keys (`vision_model.*`)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.config = config
        self.vision_model = VisionTransformer(config)

    def forward(self, pixels: Tensor) -> Tensor:
        """Pooled image features (B, hidden_size)."""
        return self.vision_model(pixels)
