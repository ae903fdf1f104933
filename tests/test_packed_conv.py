"""PackedConv2d: bf16 oneDNN convolutions with the weight packed once, bit for bit nn.Conv2d's output, and
kept only while the weight and the input size are unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from lienzo.adapters.patcher import module_view
from lienzo.cli import main
from lienzo.models.packed_conv import (
    PACKED_WEIGHTS,
    PackedConv2d,
    bf16_kernels,
    packable,
    set_weight_packing,
    weight_packing,
)

LAYERS = {
    "3x3": dict(kernel_size=3, padding=1),
    "1x1": dict(kernel_size=1),
    "3x3 stride 2": dict(kernel_size=3, stride=2, padding=1),
    "3x3 unpadded, no bias": dict(kernel_size=3, bias=False),
}
needs_bf16_kernels = pytest.mark.skipif(not bf16_kernels(), reason="oneDNN has no bf16 kernels for this CPU")


def channels_last(*size: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return torch.randn(*size).to(dtype, memory_format=torch.channels_last)


def reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)


@needs_bf16_kernels
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_packed_convolutions_are_nn_conv2d_bit_for_bit_at_every_input_size(layer: str) -> None:
    """Batch rows stay those of single runs: each input size gets the weight packed for it."""
    torch.manual_seed(0)
    conv = PackedConv2d(16, 24, **LAYERS[layer]).bfloat16()
    with torch.inference_mode():
        for size in ((2, 16, 8, 8), (1, 16, 13, 7), (3, 16, 16, 16), (1, 16, 16, 16)):
            x = channels_last(*size)
            assert packable(conv, x)
            got = conv(x)
            entry = PACKED_WEIGHTS.entries[id(conv.weight)]
            assert entry.args == (conv.padding, conv.stride, conv.dilation, conv.groups, size)
            assert got.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(got, reference(conv, x), rtol=0, atol=0)


@needs_bf16_kernels
def test_the_packed_weight_is_kept_until_the_weight_changes_and_views_share_it() -> None:
    torch.manual_seed(0)
    conv = PackedConv2d(8, 8, 3, padding=1).bfloat16()
    x = channels_last(1, 8, 6, 6)
    with torch.no_grad():
        conv(x)
        first = PACKED_WEIGHTS.kept(conv.weight)
        conv(x)
        assert PACKED_WEIGHTS.kept(conv.weight) is first
        view = module_view(conv)
        view(x)
        assert PACKED_WEIGHTS.kept(view.weight) is first
        conv.weight.mul_(2.0)
        torch.testing.assert_close(conv(x), reference(conv, x), rtol=0, atol=0)
        assert PACKED_WEIGHTS.kept(conv.weight) is not first
        conv.weight = nn.Parameter(torch.zeros_like(conv.weight))
        torch.testing.assert_close(conv(x), conv.bias[:, None, None].expand(1, 8, 6, 6))
        duplicate = copy.deepcopy(conv)
        assert PACKED_WEIGHTS.kept(duplicate.weight) is None
        torch.testing.assert_close(duplicate(x), conv(x))


class Doubled(nn.Module):
    """A parametrization W -> 2W (what a LoRA being trained looks like to the convolution)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2.0 * weight


def test_training_float32_other_layouts_and_parametrized_weights_take_nn_conv2d() -> None:
    """No gradient flows through the packed kernel, so a pass that needs one takes PyTorch's convolution;
    so do float32 (PyTorch convolves small float32 inputs without oneDNN) and NCHW inputs."""
    torch.manual_seed(0)
    conv = PackedConv2d(4, 4, 3, padding=1).bfloat16()
    x = channels_last(1, 4, 5, 5).requires_grad_()
    assert not packable(conv, x)
    conv(x).float().sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    with torch.no_grad():
        assert not packable(conv, channels_last(1, 4, 5, 5).contiguous())
        assert not packable(conv.float(), channels_last(1, 4, 5, 5, dtype=torch.float32))
    conv = PackedConv2d(4, 4, 3, padding=1).bfloat16()
    parametrize.register_parametrization(conv, "weight", Doubled())
    with torch.no_grad():
        x = channels_last(1, 4, 5, 5)
        assert not packable(conv, x)
        torch.testing.assert_close(conv(x), reference(conv, x))
    assert PACKED_WEIGHTS.kept(conv.weight) is None


def test_weights_made_under_inference_mode_are_not_packed() -> None:
    """Inference tensors keep no version counter, so a packed copy could not notice an in-place write."""
    with torch.inference_mode():
        conv = PackedConv2d(4, 4, 1).bfloat16()
        x = channels_last(1, 4, 3, 3)
        assert not packable(conv, x)
        torch.testing.assert_close(conv(x), reference(conv, x))
    assert PACKED_WEIGHTS.kept(conv.weight) is None


def test_state_dict_keys_are_those_of_nn_conv2d() -> None:
    assert PackedConv2d(3, 5, 3).state_dict().keys() == nn.Conv2d(3, 5, 3).state_dict().keys()


@needs_bf16_kernels
def test_weight_packing_can_be_turned_off_for_memory_with_the_same_output(tmp_path) -> None:
    torch.manual_seed(0)
    conv = PackedConv2d(16, 24, kernel_size=3, padding=1).bfloat16()
    x = channels_last(1, 16, 8, 8)
    try:
        with torch.inference_mode():
            packed = conv(x)
            assert PACKED_WEIGHTS.kept(conv.weight) is not None
            set_weight_packing(False)
            assert not weight_packing() and PACKED_WEIGHTS.kept(conv.weight) is None
            assert not packable(conv, x) and torch.equal(conv(x), packed)
            assert PACKED_WEIGHTS.kept(conv.weight) is None
        assert main(["generate", "a red circle", "--steps", "1", "-q", "-o", str(tmp_path / "a.png")]) == 0
        assert weight_packing()
        off = ["--no-weight-packing", "-o", str(tmp_path / "b.png")]
        assert main(["generate", "a red circle", "--steps", "1", "-q", *off]) == 0
        assert not weight_packing()
    finally:
        set_weight_packing(True)
