"""Hypernetwork training pieces: networks built in A1111's layer order, A1111's dropout structure, files in
A1111's layout that lienzo's reader takes back with the same effect, and the frozen model under training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lienzo
from lienzo.errors import InvalidArgumentError
from lienzo.io.hypernetwork_files import read_hypernetwork_file
from lienzo.io.hypernetwork_writer import (
    HypernetworkSettings,
    hypernetwork_file_contents,
    write_hypernetwork_file,
)
from lienzo.pipelines.hypernetworks import build_hypernetwork
from lienzo.training import LatentDiffusionObjective
from lienzo.training.hypernetwork_training import (
    HookedUNet,
    HypernetworkObjective,
    check_widths,
    layer_state_dicts,
    new_hypernetwork,
)
from tiny_models import tiny_pipeline_folder

A1111_KEYS = {
    "step",
    "name",
    "layer_structure",
    "activation_func",
    "is_layer_norm",
    "weight_initialization",
    "sd_checkpoint",
    "sd_checkpoint_name",
    "activate_output",
    "use_dropout",
    "dropout_structure",
    "last_layer_dropout",
    "optional_info",
}


@pytest.mark.parametrize(
    ("structure", "use_dropout", "last_layer_dropout", "expected"),
    [
        ((1, 2, 1), False, True, (0, 0, 0)),
        ((1, 2, 1), True, True, (0, 0.3, 0)),
        ((1, 2, 1), True, False, (0, 0, 0)),
        ((1, 2, 2, 1), True, True, (0, 0.3, 0.3, 0)),
        ((1, 2, 2, 1), True, False, (0, 0.3, 0, 0)),
        ((1, 1.5, 1.5, 1.5, 1), True, True, (0, 0.3, 0.3, 0.3, 0)),
    ],
)
def test_dropout_structure_follows_a1111(structure, use_dropout, last_layer_dropout, expected):
    settings = HypernetworkSettings(structure, use_dropout=use_dropout, last_layer_dropout=last_layer_dropout)
    assert settings.dropout_structure == pytest.approx(expected)


def test_layers_in_a1111_order_with_a1111_keys():
    settings = HypernetworkSettings((1, 2, 1), "relu", layer_norm=True, use_dropout=True)
    network = new_hypernetwork([8], settings)
    k, _ = network.pair(8)
    kinds = [type(layer) for layer in k.linear]
    assert kinds == [nn.Linear, nn.ReLU, nn.LayerNorm, nn.Dropout, nn.Linear, nn.LayerNorm]
    assert list(layer_state_dicts(network)[8][0]) == [
        "linear.0.weight",
        "linear.0.bias",
        "linear.2.weight",
        "linear.2.bias",
        "linear.4.weight",
        "linear.4.bias",
        "linear.5.weight",
        "linear.5.bias",
    ]
    assert k.linear[0].weight.shape == (16, 8) and k.linear[4].weight.shape == (8, 16)
    assert k.linear[0].weight.std().item() == pytest.approx(0.01, rel=0.3)
    assert torch.all(k.linear[0].bias == 0) and torch.all(k.linear[2].bias == 0)
    assert 0 < k.linear[2].weight.abs().max().item() < 0.1  # A1111 draws LayerNorm weights N(0, 0.01) too


def test_activate_output_puts_the_activation_after_the_last_layer():
    settings = HypernetworkSettings((1, 2, 1), "tanh", activate_output=True)
    k, _ = new_hypernetwork([4], settings).pair(4)
    assert [type(layer) for layer in k.linear] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh]


def test_bad_settings_are_refused():
    with pytest.raises(InvalidArgumentError, match="start and end with 1"):
        HypernetworkSettings((2, 1))
    with pytest.raises(InvalidArgumentError, match="weight initialization"):
        HypernetworkSettings(weight_initialization="Zeros")
    with pytest.raises(InvalidArgumentError, match="activation_func"):
        new_hypernetwork([4], HypernetworkSettings(activation="nonsense"))


@pytest.mark.parametrize(
    "settings",
    [
        HypernetworkSettings(),
        HypernetworkSettings((1, 2, 2, 1), "relu", layer_norm=True, use_dropout=True),
        HypernetworkSettings((1, 1.5, 1), "mish", activate_output=True, weight_initialization="XavierNormal"),
        HypernetworkSettings((1, 2, 1), "leakyrelu", weight_initialization="KaimingUniform"),
    ],
)
def test_file_round_trip_in_a1111_layout(tmp_path, settings):
    torch.manual_seed(0)
    network = new_hypernetwork([8, 16], settings, seed=3)
    for param in network.parameters():
        param.data.normal_(0, 0.2)
    contents = hypernetwork_file_contents(
        layer_state_dicts(network),
        settings,
        name="star",
        step=42,
        sd_checkpoint="0123456789",
        sd_checkpoint_name="m",
    )
    path = write_hypernetwork_file(tmp_path / "star.pt", contents)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == A1111_KEYS | {8, 16}
    assert isinstance(saved[8], tuple) and len(saved[8]) == 2
    assert saved["layer_structure"] == pytest.approx(list(settings.layer_structure))
    assert all(type(m) is int for m in saved["layer_structure"] if float(m).is_integer())
    assert saved["last_layer_dropout"] == (settings.dropout_structure[-2] != 0)
    assert saved["step"] == 42 and saved["name"] == "star" and saved["sd_checkpoint"] == "0123456789"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    read = read_hypernetwork_file(path)
    assert read.widths == (8, 16) and read.activation == settings.activation
    assert read.activate_output == settings.activate_output and read.layer_norm == settings.layer_norm
    built = build_hypernetwork(read)
    network.eval()
    for width in (8, 16):
        x = torch.randn(3, 5, width)
        for trained, loaded in zip(network.pair(width), built.pair(width), strict=True):
            torch.testing.assert_close(loaded(x, 0.7), trained(x, 0.7), rtol=0, atol=0)


def plain_types(value) -> set[type]:
    """Every type found in a nested structure of containers."""
    if isinstance(value, dict):
        return {dict}.union(*(plain_types(key) | plain_types(item) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return {type(value)}.union(*(plain_types(item) for item in value))
    return {type(value)}


def test_file_holds_only_plain_containers_and_tensors(tmp_path):
    settings = HypernetworkSettings(use_dropout=True)
    contents = hypernetwork_file_contents(
        layer_state_dicts(new_hypernetwork([4], settings)), settings, name="n", step=1
    )
    path = write_hypernetwork_file(tmp_path / "n.pt", contents)
    assert plain_types(torch.load(path, weights_only=True)) <= {
        dict,
        tuple,
        list,
        str,
        int,
        float,
        bool,
        type(None),
        torch.Tensor,
        torch.nn.Parameter,
    }
    with pytest.raises(InvalidArgumentError, match=r"\.pt"):
        write_hypernetwork_file(tmp_path / "n.safetensors", contents)


def tiny_training_pipe():
    return lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32, cache=False)


def test_hooked_unet_matches_the_pipeline_with_the_written_file(tmp_path):
    pipe = tiny_training_pipe()
    settings = HypernetworkSettings((1, 2, 1), "relu")
    network = new_hypernetwork(check_widths(pipe.unet, None), settings)
    for param in network.parameters():
        param.data.normal_(0, 0.1)
    network.eval()
    hooked = HookedUNet(pipe.unet, network)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    cond = lienzo.diffusion.Conditioning(torch.randn(1, 77, pipe.unet.config.context_dim))
    with torch.no_grad():
        trained = hooked(x, t, cond)
        hooked.remove_hooks()
        plain = pipe.unet(x, t, cond)
        path = write_hypernetwork_file(
            tmp_path / "h.pt",
            hypernetwork_file_contents(layer_state_dicts(network), settings, name="h", step=1),
        )
        other = tiny_training_pipe()
        other.hypernetworks.add(path, 1.0)
        loaded = other.unet(x, t, cond)
    assert not torch.allclose(trained, plain)
    torch.testing.assert_close(loaded, trained, rtol=1e-5, atol=1e-6)


def test_objective_trains_only_the_hypernetwork():
    pipe = tiny_training_pipe()
    base = LatentDiffusionObjective(
        pipe.unet, pipe.vae, pipe.text_encoders[0], pipe.tokenizers[0], spec=pipe.spec, caption_dropout=0.0
    )
    network = new_hypernetwork(check_widths(pipe.unet, None), HypernetworkSettings())
    objective = HypernetworkObjective(base, network, HypernetworkSettings())
    assert set(objective.hooked.state_dict()) == {f"hypernetwork.{key}" for key in network.state_dict()}
    batch = {"image": torch.rand(2, 3, 32, 32) * 2 - 1, "caption": ["a", "b"]}
    loss = objective.loss(batch, torch.Generator().manual_seed(0), objective.trainable)
    loss.backward()
    assert all(param.grad is not None for param in network.parameters())
    assert all(param.grad is None and not param.requires_grad for param in pipe.unet.parameters())
    with pytest.raises(InvalidArgumentError, match="widths"):
        check_widths(pipe.unet, [12345])
