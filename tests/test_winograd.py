"""3x3 convolutions by Winograd's F(2x2, 3x3) and F(4x4, 3x3): the direct form's values, and where lienzo
uses which."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lienzo.models.winograd as winograd
from lienzo.models.winograd import G_4X4, Conv3x3, filter_transform, winograd_conv3x3, winograd_tile
from parity import unet_error, vae_errors

CHANNELS_LAST = torch.channels_last


@pytest.fixture
def every_size(monkeypatch):
    """Winograd for layers of any size, so that tiny tensors and the tiny models exercise it."""
    monkeypatch.setattr(winograd, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "WINOGRAD_MIN_TILES", 1)


@pytest.fixture
def winograd_calls(monkeypatch) -> list[tuple[tuple[int, ...], int]]:
    """The input shape and tile size of every call of the Winograd form."""
    calls: list[tuple[tuple[int, ...], int]] = []
    original = winograd.winograd_conv3x3

    def spy(x, weight, bias, tile):
        calls.append((tuple(x.shape), tile))
        return original(x, weight, bias, tile)

    monkeypatch.setattr(winograd, "winograd_conv3x3", spy)
    return calls


def channels_last_input(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).contiguous(
        memory_format=CHANNELS_LAST
    )


@pytest.mark.parametrize(
    ("batch", "channels", "height", "width", "out_channels"),
    [(1, 3, 1, 1, 2), (2, 5, 5, 7, 3), (2, 8, 8, 3, 6), (1, 4, 2, 2, 4), (3, 16, 6, 9, 8)],
)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("tile", "tolerance"), [(2, 1e-5), (4, 1e-4)])
def test_values_match_the_direct_convolution(
    batch, channels, height, width, out_channels, bias, tile, tolerance
):
    x = channels_last_input(batch, channels, height, width)
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(out_channels, channels, 3, 3, generator=generator) / (9 * channels) ** 0.5
    b = torch.randn(out_channels, generator=generator) if bias else None
    expected = F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=1)
    got = winograd_conv3x3(x, weight, b, tile)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=CHANNELS_LAST)
    torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)


def test_the_filter_transform_is_g_g_gt_for_either_weight_layout():
    weight = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(3))
    g = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
    expected = torch.einsum("ik,ockl,jl->oijc", g, weight, g).reshape(3, 16, 2)
    torch.testing.assert_close(filter_transform(weight), expected)
    torch.testing.assert_close(filter_transform(weight.contiguous(memory_format=CHANNELS_LAST)), expected)
    expected = torch.einsum("ik,ockl,jl->oijc", G_4X4, weight, G_4X4).reshape(3, 36, 2)
    torch.testing.assert_close(filter_transform(weight, G_4X4), expected)


def test_conv3x3_takes_the_winograd_form_only_where_it_applies(every_size, winograd_calls):
    torch.manual_seed(0)
    conv = Conv3x3(4, 4).requires_grad_(False)
    x = channels_last_input(1, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(
            conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5
        )
        assert winograd_calls == [((1, 4, 4, 4), 4)]
        conv(x.contiguous())
        conv.bfloat16()(x.bfloat16())
    conv.float().requires_grad_(True)
    conv(x).sum().backward()
    assert conv.weight.grad is not None
    assert winograd_calls == [((1, 4, 4, 4), 4)], "NCHW input, bf16 and autograd take PyTorch's convolution"


@pytest.mark.parametrize(("side", "tile"), [(32, 4), (16, 2), (8, None)])
def test_the_tile_grows_with_the_layer_and_small_layers_take_the_direct_form(side, tile):
    assert 2 * 8 * 8 == winograd.WINOGRAD_MIN_TILES
    conv = Conv3x3(winograd.WINOGRAD_MIN_CHANNELS, winograd.WINOGRAD_MIN_CHANNELS).requires_grad_(False)
    x = torch.empty(2, conv.in_channels, side, side).contiguous(memory_format=CHANNELS_LAST)
    assert winograd_tile(conv, x) == tile
    narrow = Conv3x3(winograd.WINOGRAD_MIN_CHANNELS // 2, winograd.WINOGRAD_MIN_CHANNELS)
    assert winograd_tile(narrow.requires_grad_(False), x[:, : narrow.in_channels]) is None


def test_inference_without_no_grad_uses_it_for_frozen_weights(every_size, winograd_calls):
    conv = Conv3x3(4, 4).requires_grad_(False)
    conv(channels_last_input(1, 4, 2, 2))
    assert winograd_calls == [((1, 4, 2, 2), 4)]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize(("min_tiles", "tiles_used"), [(1, {4}), (33, {2, 4})])
def test_the_unet_and_vae_still_match_diffusers_through_it(
    every_size, winograd_calls, monkeypatch, family, min_tiles, tiles_used
):
    monkeypatch.setattr(winograd, "WINOGRAD_MIN_TILES", min_tiles)
    assert unet_error(family) < 1e-4
    used_by_unet = len(winograd_calls)
    mean_error, decode_error = vae_errors(family)
    assert mean_error < 1e-4 and decode_error < 1e-4
    assert used_by_unet > 0 and len(winograd_calls) > used_by_unet
    assert {tile for _, tile in winograd_calls} == tiles_used
