"""WeightCache: what is derived from a weight is kept by weight, shared by views, and goes with the weight."""

from __future__ import annotations

import gc

import torch
from torch import nn

from lienzo.adapters.patcher import module_view
from lienzo.models.weight_cache import WeightCache, cacheable


def counted_cache() -> tuple[WeightCache, list[tuple]]:
    calls: list[tuple] = []

    def derive(weight: torch.Tensor, *args) -> torch.Tensor:
        calls.append(args)
        return weight * 2.0

    return WeightCache(derive), calls


def test_derived_once_per_weight_version_and_arguments() -> None:
    cache, calls = counted_cache()
    layer = nn.Linear(3, 3)
    with torch.no_grad():
        first = cache(layer.weight, 1)
        assert cache(layer.weight, 1) is first and len(calls) == 1
        assert cache(layer.weight, 2) is not first and calls == [(1,), (2,)]
        layer.weight.add_(1.0)
        torch.testing.assert_close(cache(layer.weight, 2), 2.0 * layer.weight)
        assert len(calls) == 3


def test_views_share_it_and_it_goes_with_the_weight() -> None:
    cache, calls = counted_cache()
    layer = nn.Linear(3, 3)
    view = module_view(layer)
    with torch.no_grad():
        assert cache(view.weight) is cache(layer.weight)
    assert len(calls) == 1 and len(cache.entries) == 1
    del layer, view
    gc.collect()
    assert cache.entries == {}


def test_only_parameters_outside_training_with_a_version_counter_are_cacheable() -> None:
    layer = nn.Linear(3, 3)
    assert not cacheable(layer.weight)
    with torch.no_grad():
        assert cacheable(layer.weight)
        assert not cacheable(layer.weight * 1.0)
    with torch.inference_mode():
        assert not cacheable(nn.Parameter(torch.ones(2)))
