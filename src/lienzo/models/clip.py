"""CLIP text transformer (Radford et al. 2021), OpenAI and OpenCLIP variants, optional text projection."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lienzo.errors import InvalidArgumentError
from lienzo.models.attention import attention


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


@dataclass
class CLIPTextOutput:
    """What a CLIP text tower returns: per-token hidden states and the pooled (EOS) embedding."""

    hidden: Tensor
    pooled: Tensor | None


def quick_gelu(x: Tensor) -> Tensor:
    """Sigmoid approximation of GELU, x * sigmoid(1.702 x) (Hendrycks & Gimpel 2016), as in OpenAI CLIP."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class TextEmbeddings(nn.Module):
    """Token embedding plus learned absolute position embedding."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: Tensor, inputs_embeds: Tensor | None = None) -> Tensor:
        """Embed `input_ids` (B, T) into (B, T, D); `inputs_embeds` (B, T, D) replaces the token lookup."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        tokens = self.token_embedding(input_ids) if inputs_embeds is None else inputs_embeds
        return tokens + self.position_embedding(positions)


class SelfAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017) through SDPA, causal for the text tower."""

    def __init__(self, config, causal: bool):
        super().__init__()
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.causal = causal
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """Attend each token to every token, or with `causal` to itself and the tokens before it."""
        batch, length, width = x.shape

        def split_heads(t: Tensor) -> Tensor:
            return t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        q, k, v = split_heads(self.q_proj(x)), split_heads(self.k_proj(x)), split_heads(self.v_proj(x))
        attended = attention(q, k, v, is_causal=self.causal)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, width))


class FeedForward(nn.Module):
    """Two-layer MLP with the configured activation."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        if config.hidden_act not in ACTIVATIONS:
            known = ", ".join(sorted(ACTIVATIONS))
            raise InvalidArgumentError(f"unknown CLIP hidden_act {config.hidden_act!r}; use one of: {known}")
        self.activation = ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        """fc2(act(fc1(x)))."""
        return self.fc2(self.activation(self.fc1(x)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config, causal: bool):
        super().__init__()
        self.self_attn = SelfAttention(config, causal)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = FeedForward(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        """One residual attention block and one residual MLP block."""
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    """The stack of encoder layers of a CLIP tower (causal for text)."""

    def __init__(self, config, causal: bool):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config, causal) for _ in range(config.num_hidden_layers))


class TextTransformer(nn.Module):
    """Embeddings, encoder layers and the final layer norm."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.embeddings = TextEmbeddings(config)
        self.encoder = Encoder(config, causal=True)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class CLIPTextModel(nn.Module):
    """CLIP text tower (Radford et al. 2021) with transformers' state-dict keys; optional projection."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.text_model = TextTransformer(config)
        if config.projection_dim is not None:
            self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        else:
            self.text_projection = None

    @property
    def device(self) -> torch.device:
        """Where the weights live (token ids must be moved there)."""
        return self.text_model.embeddings.token_embedding.weight.device

    def hidden_state_index(self, hidden_layer: int) -> int:
        """Non-negative index into the hidden states (0 = embeddings, n = after layer n) of `hidden_layer`."""
        count = self.config.num_hidden_layers + 1
        if not -count <= hidden_layer < count:
            raise InvalidArgumentError(
                f"hidden layer {hidden_layer} is outside this {count - 1}-layer text encoder; "
                f"use a value from {-count} to {count - 1} (or a smaller clip skip)"
            )
        return hidden_layer % count

    def forward(
        self,
        input_ids: Tensor,
        *,
        hidden_layer: int = -1,
        final_norm: bool = True,
        want_pooled: bool = True,
        inputs_embeds: Tensor | None = None,
    ) -> CLIPTextOutput:
        """Hidden state `hidden_layer` (transformers indexing) of `input_ids` (B, T) and the pooled vector.

        The pooled vector is the final-normed last layer output at the EOS position (argmax of the ids),
        projected when the model has a text projection; it is None when `want_pooled` is False, in which
        case layers past `hidden_layer` are not run. `inputs_embeds` (B, T, D), when given, are the token
        embeddings to use instead of looking up `input_ids` (textual inversion); the ids still locate EOS.
        """
        target = self.hidden_state_index(hidden_layer)
        last = self.config.num_hidden_layers if want_pooled else target
        x = self.text_model.embeddings(input_ids, inputs_embeds)
        hidden = x
        for index, layer in enumerate(self.text_model.encoder.layers[:last], start=1):
            x = layer(x)
            if index == target:
                hidden = x
        final_layer_norm = self.text_model.final_layer_norm
        if not want_pooled:
            return CLIPTextOutput(hidden=final_layer_norm(hidden) if final_norm else hidden, pooled=None)
        last_normed = final_layer_norm(x)
        if final_norm:
            hidden = last_normed if target == last else final_layer_norm(hidden)
        eos_positions = input_ids.to(torch.int32).argmax(dim=-1)
        pooled = last_normed[torch.arange(x.shape[0], device=x.device), eos_positions]
        if self.text_projection is not None:
            pooled = self.text_projection(pooled)
        return CLIPTextOutput(hidden=hidden, pooled=pooled)
