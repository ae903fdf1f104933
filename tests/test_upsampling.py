"""Nearest 2x upsampling + 3x3 convolution as a sub-pixel convolution: the plain values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import lienzo.models.upsampling as upsampling
from lienzo.models.blocks import Upsample as UNetUpsample
from lienzo.models.upsampling import FOLDED_KERNELS, SUBPIXEL_MIN_CELLS, plain_conv, upsample_conv
from lienzo.models.vae import Upsample as VAEUpsample


@pytest.fixture
def every_size(monkeypatch):
    """The sub-pixel form for inputs of any size, so that small tensors test it."""
    monkeypatch.setattr(upsampling, "SUBPIXEL_MIN_CELLS", 1)


def plain_form(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def conv_layer(channels_in: int, channels_out: int, *, bias: bool = True, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=bias)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (4, 4), (5, 7), (8, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_values_match_the_plain_form(every_size, height, width, bias):
    conv = conv_layer(6, 5, bias=bias)
    x = torch.randn(2, 6, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = plain_form(x, conv), upsample_conv(x, conv)
    assert got.shape == (2, 5, 2 * height, 2 * width)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_channels_last_input_gives_a_channels_last_output_of_the_same_values(every_size):
    conv = conv_layer(8, 8)
    x = torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = upsample_conv(x, conv)
        expected = plain_form(x, conv)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_gradients_match_the_plain_form(every_size):
    conv = conv_layer(4, 4)
    x = torch.randn(1, 4, 5, 6, requires_grad=True)
    target = torch.randn(1, 4, 10, 12)
    grads = []
    for form in (plain_form, upsample_conv):
        conv.zero_grad()
        x.grad = None
        ((form(x, conv) - target) ** 2).sum().backward()
        grads.append((x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()))
    for expected, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_bfloat16_stays_within_its_rounding(every_size):
    conv = conv_layer(16, 16).to(torch.bfloat16)
    x = torch.randn(1, 16, 8, 8).to(torch.bfloat16)
    with torch.no_grad():
        expected, got = plain_form(x, conv).float(), upsample_conv(x, conv).float()
    assert got.dtype == torch.float32 and (got - expected).abs().max() <= 0.02 * expected.abs().max()


class AddOne(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + 1.0


def test_a_parametrized_weight_is_used_and_a_hooked_conv_takes_the_plain_path(every_size):
    conv = conv_layer(3, 3)
    x = torch.randn(1, 3, 4, 4)
    parametrize.register_parametrization(conv, "weight", AddOne())
    assert plain_conv(conv)
    with torch.no_grad():
        torch.testing.assert_close(upsample_conv(x, conv), plain_form(x, conv), rtol=1e-5, atol=1e-5)
    seen = []
    conv.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    assert not plain_conv(conv)
    with torch.no_grad():
        upsample_conv(x, conv)
    assert seen == [(1, 3, 8, 8)]


def test_other_convolutions_take_the_plain_path():
    assert not plain_conv(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    assert not plain_conv(nn.Conv2d(3, 3, 3, padding=1, stride=2))
    assert not plain_conv(nn.Conv2d(3, 3, 1))
    assert plain_conv(nn.Conv2d(3, 3, 3, padding=1))


def test_the_folded_kernel_is_kept_until_the_weight_changes():
    conv = conv_layer(4, 4)
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        upsample_conv(x, conv)
        first = FOLDED_KERNELS.kept(conv.weight)
        assert first is not None
        upsample_conv(x, conv)
        assert FOLDED_KERNELS.kept(conv.weight) is first
        conv.weight.mul_(2.0)
        torch.testing.assert_close(upsample_conv(x, conv), plain_form(x, conv), rtol=1e-5, atol=1e-5)
        second = FOLDED_KERNELS.kept(conv.weight)
        assert second is not first
        torch.testing.assert_close(second, 2.0 * first)
        conv.weight = nn.Parameter(torch.zeros_like(conv.weight))
        upsample_conv(x, conv)
        assert FOLDED_KERNELS.kept(conv.weight).abs().max() == 0


@pytest.mark.parametrize("side", [4, 16])
def test_the_upsampler_modules_fold_from_the_threshold_on_and_match_the_plain_form(side):
    assert 4 * 4 < SUBPIXEL_MIN_CELLS <= 16 * 16
    torch.manual_seed(0)
    vae_up, unet_up = VAEUpsample(8), UNetUpsample(8)
    x = torch.randn(1, 8, side, side)
    with torch.no_grad():
        torch.testing.assert_close(vae_up(x), plain_form(x, vae_up.conv), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(unet_up(x, None, None), plain_form(x, unet_up.conv), rtol=1e-5, atol=1e-5)
    folded = side * side >= SUBPIXEL_MIN_CELLS
    for up in (vae_up, unet_up):
        assert (FOLDED_KERNELS.kept(up.conv.weight) is not None) is folded


def test_a_kernel_folded_under_inference_mode_serves_a_later_backward_pass(every_size):
    conv = conv_layer(4, 4).requires_grad_(False)
    x = torch.randn(1, 4, 3, 3)
    with torch.inference_mode():
        upsample_conv(x, conv)
    assert FOLDED_KERNELS.kept(conv.weight) is not None
    trained = x.clone().requires_grad_()
    upsample_conv(trained, conv).sum().backward()
    expected = x.clone().requires_grad_()
    plain_form(expected, conv).sum().backward()
    torch.testing.assert_close(trained.grad, expected.grad, rtol=1e-5, atol=1e-5)


def test_weights_made_under_inference_mode_fold_on_every_call(every_size):
    with torch.inference_mode():
        conv = conv_layer(4, 4)
        x = torch.randn(1, 4, 3, 3)
        torch.testing.assert_close(upsample_conv(x, conv), plain_form(x, conv), rtol=1e-5, atol=1e-5)
        conv.weight.mul_(2.0)
        torch.testing.assert_close(upsample_conv(x, conv), plain_form(x, conv), rtol=1e-5, atol=1e-5)
    assert FOLDED_KERNELS.kept(conv.weight) is None
