"""Scaled dot-product attention that picks the faster CPU kernel: lienzo's bf16 kernel for inference,
the math kernel for training on short sequences."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lienzo.models import cpu_attention

SHORT_ATTENTION_PAIRS = 128 * 128
"""Query-key pairs up to which the CPU math kernel trains faster than the flash kernel."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v (Vaswani et al. 2017) over (batch, heads, tokens, dim) tensors.

    bf16 inference on a CPU with AVX-512 BF16 runs lienzo's kernel (lienzo.models.cpu_attention: the
    flash kernel's numerics, 3-4x its speed there). On CPU, when autograd records and there are at most
    128 × 128 query-key pairs, the math kernel runs: there PyTorch's CPU flash kernel takes 2-2.5x as
    long forward and backward (64 and 77 tokens: the shapes recipe's attention and its text encoder).
    Elsewhere PyTorch chooses."""
    if not is_causal and cpu_attention.applies(q, k, v):
        return cpu_attention.attend(q, k, v)
    short = q.shape[-2] * k.shape[-2] <= SHORT_ATTENTION_PAIRS
    if q.device.type == "cpu" and short and torch.is_grad_enabled() and q.requires_grad:
        with sdpa_kernel([SDPBackend.MATH]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
