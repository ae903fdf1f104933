"""GroupNorm: small bfloat16 channels_last maps are normalised in float32, to the same result."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lienzo.models.norms import SMALL_MAP_CELLS, GroupNorm, float32_route


def bf16_channels_last(*size: int) -> torch.Tensor:
    return (3.0 * torch.randn(*size) + 1.0).bfloat16().contiguous(memory_format=torch.channels_last)


def test_only_small_bfloat16_channels_last_maps_take_the_float32_route() -> None:
    side = int(SMALL_MAP_CELLS**0.5)
    assert float32_route(bf16_channels_last(2, 64, side, side))
    assert not float32_route(bf16_channels_last(2, 64, 2 * side, side))
    assert not float32_route(bf16_channels_last(2, 64, 8, 8).contiguous())
    assert not float32_route(bf16_channels_last(2, 64, 8, 8).float())


def test_the_float32_route_matches_a_float32_reference_to_bfloat16_rounding() -> None:
    torch.manual_seed(0)
    norm = GroupNorm(16, 64, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
    reference_norm = nn.GroupNorm(16, 64, eps=1e-5).bfloat16()
    reference_norm.load_state_dict(norm.state_dict())
    norm = norm.bfloat16()
    for size in ((2, 64, 16, 16), (1, 64, 5, 3)):
        x = bf16_channels_last(*size)
        exact = F.group_norm(x.float(), 16, norm.weight.float(), norm.bias.float(), 1e-5)
        got = norm(x)
        assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, exact.bfloat16(), rtol=0, atol=0)
        torch.testing.assert_close(got.float(), reference_norm(x).float(), rtol=2**-7, atol=2**-7)
        alone = norm(x[-1:].contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(got[-1:], alone, rtol=0, atol=0)


def test_other_inputs_take_nn_group_norm_and_gradients_flow() -> None:
    torch.manual_seed(0)
    norm = GroupNorm(4, 16)
    x = torch.randn(2, 16, 32, 32, requires_grad=True)
    torch.testing.assert_close(norm(x), F.group_norm(x, 4, norm.weight, norm.bias, norm.eps))
    small = bf16_channels_last(1, 16, 4, 4).requires_grad_()
    norm.bfloat16()(small).float().sum().backward()
    assert small.grad is not None and norm.weight.grad is not None


def test_state_dict_keys_are_those_of_nn_group_norm() -> None:
    assert GroupNorm(4, 16).state_dict().keys() == nn.GroupNorm(4, 16).state_dict().keys()
