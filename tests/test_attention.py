"""The attention helper: the same values whichever kernel it picks, the math kernel where it is faster."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lienzo.models import attention as attention_module
from lienzo.models.attention import attention


@pytest.mark.parametrize("tokens", [16, 77, 300])
@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_matches_the_reference_with_and_without_gradients(tokens, is_causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, tokens, 16, requires_grad=True) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(attention(q, k, v, is_causal=is_causal), expected)
    with torch.no_grad():
        torch.testing.assert_close(attention(q, k, v, is_causal=is_causal), expected)
    (grad_ours,) = torch.autograd.grad(attention(q, k, v, is_causal=is_causal).sum(), q)
    (grad_reference,) = torch.autograd.grad(expected.sum(), q)
    torch.testing.assert_close(grad_ours, grad_reference)


def test_short_cpu_training_attention_uses_the_math_kernel(monkeypatch):
    chosen = []
    original = attention_module.sdpa_kernel

    def recording(backends):
        chosen.append(backends)
        return original(backends)

    monkeypatch.setattr(attention_module, "sdpa_kernel", recording)
    short = [torch.randn(1, 1, 64, 8, requires_grad=True) for _ in range(3)]
    long = [torch.randn(1, 1, 256, 8, requires_grad=True) for _ in range(3)]
    attention(*short)
    assert chosen == [[attention_module.SDPBackend.MATH]]
    attention(*long)
    with torch.no_grad():
        attention(*short)
    assert len(chosen) == 1
