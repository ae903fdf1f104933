"""The patcher: views share weights, patches compose by strength, unpatching restores the same tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lienzo.adapters import ModelPatcher, WeightPatch, module_view
from lienzo.errors import InvalidArgumentError


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.SiLU(), nn.Linear(6, 3)).to(torch.bfloat16)


def constant(value: float):
    return lambda weight: torch.full_like(weight, value)


def test_a_view_shares_tensors_but_not_structure():
    model = network()
    view = module_view(model)
    assert view is not model and view[0] is not model[0]
    assert view[0].weight is model[0].weight and view[2].bias is model[2].bias


def test_strengths_compose_in_fp32_and_cast_once():
    patcher = ModelPatcher(network())
    original = patcher.model[0].weight
    patcher.add("a", [WeightPatch(("0.weight",), constant(0.001))], strength=1.0)
    patcher.add("b", [WeightPatch(("0.weight",), constant(0.002))], strength=0.5)
    expected = (original.float() + 0.001 + 0.5 * 0.002).to(torch.bfloat16)
    assert torch.equal(patcher.model[0].weight, expected)
    patcher.set_strength("b", 0.0)
    assert torch.equal(patcher.model[0].weight, (original.float() + 0.001).to(torch.bfloat16))
    assert patcher.strengths == {"a": 1.0, "b": 0.0}


def test_removing_every_adapter_puts_back_the_same_tensors():
    patcher = ModelPatcher(network())
    originals = {name: param for name, param in patcher.model.named_parameters()}
    patches = [WeightPatch((name,), constant(0.25)) for name in originals]
    patcher.add("everything", patches)
    assert all(param is not originals[name] for name, param in patcher.model.named_parameters())
    patcher.add("first-only", [WeightPatch(("0.bias",), constant(1.0))])
    patcher.remove("everything")
    assert patcher.model.get_parameter("0.weight") is originals["0.weight"]
    assert patcher.model.get_parameter("0.bias") is not originals["0.bias"]
    patcher.unpatch()
    assert all(param is originals[name] for name, param in patcher.model.named_parameters())


def test_a_fused_patch_is_split_over_its_parameters():
    """q (6 rows) and k (3 rows) patched as one (9, 4) weight, as a fused in_proj LoRA is."""
    torch.manual_seed(0)
    patcher = ModelPatcher(nn.ModuleDict({"q": nn.Linear(4, 6), "k": nn.Linear(4, 3)}))
    q, k = patcher.model["q"].weight.clone(), patcher.model["k"].weight.clone()
    seen = []

    def fused(weight: torch.Tensor) -> torch.Tensor:
        seen.append(weight.shape)
        return torch.arange(36.0).reshape(9, 4)

    patcher.add("qk", [WeightPatch(("q.weight", "k.weight"), fused)], strength=2.0)
    assert seen == [(9, 4)]
    assert torch.equal(patcher.model["q"].weight, q + 2 * torch.arange(24.0).reshape(6, 4))
    assert torch.equal(patcher.model["k"].weight, k + 2 * torch.arange(24.0, 36.0).reshape(3, 4))


def test_clones_are_independent_and_start_unpatched():
    patcher = ModelPatcher(network())
    original = patcher.model[0].weight
    patcher.add("a", [WeightPatch(("0.weight",), constant(1.0))])
    clone = patcher.clone()
    assert clone.model[0].weight is original and clone.strengths == {}
    clone.add("b", [WeightPatch(("0.weight",), constant(2.0))])
    assert torch.equal(patcher.model[0].weight, (original.float() + 1).to(torch.bfloat16))


def test_unknown_weights_and_adapters_are_clear_errors():
    patcher = ModelPatcher(network())
    with pytest.raises(InvalidArgumentError, match="another model family"):
        patcher.add("x", [WeightPatch(("5.weight",), constant(1.0))])
    with pytest.raises(InvalidArgumentError, match="no adapter 'y'"):
        patcher.set_strength("y", 1.0)
