"""A1111 hypernetworks: files in A1111's layout, the attention math against a reference written from A1111's
formula (k = to_k(HN_k(s)), v = to_v(HN_v(s)), HN(x) = x + m · MLP(x)), hooks that never leak, prompt tags."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lienzo
from lienzo.adapters import ModelPatcher
from lienzo.errors import (
    CorruptCheckpointError,
    InvalidArgumentError,
    ModelNotFoundError,
    UnsafeCheckpointError,
)
from lienzo.io.hypernetwork_files import read_hypernetwork_file
from lienzo.io.library import ModelLibrary
from lienzo.models.blocks import CrossAttention
from lienzo.pipelines.metadata import format_parameters, parse_parameters
from lienzo.text.network_tags import HypernetTag, LoraTag, extract_hypernet_tags, extract_lora_tags
from tiny_models import tiny_pipeline_folder

SETTINGS = {"width": 32, "height": 32, "steps": 2, "seed": 3, "progress": False}
TOLERANCE = 1e-5


class A1111Network(nn.Module):
    """One k or v network as A1111 builds it: for each layer a Linear, the activation (after the last Linear
    only with activate_output), a LayerNorm, a Dropout; forward x + m · linear(x)."""

    def __init__(
        self, width, structure, activation=None, layer_norm=False, dropout=None, activate_output=False
    ):
        super().__init__()
        layers: list[nn.Module] = []
        last = len(structure) - 2
        for i in range(len(structure) - 1):
            layers.append(nn.Linear(int(width * structure[i]), int(width * structure[i + 1])))
            if activation is not None and (i < last or activate_output):
                layers.append(activation())
            if layer_norm:
                norm = nn.LayerNorm(int(width * structure[i + 1]))
                nn.init.normal_(norm.weight, 1.0, 0.3)
                nn.init.normal_(norm.bias, 0.0, 0.3)
                layers.append(norm)
            if dropout is not None and dropout[i + 1] > 0:
                layers.append(nn.Dropout(dropout[i + 1]))
        self.linear = nn.Sequential(*layers)
        self.eval().requires_grad_(False)

    def forward(self, x, multiplier=1.0):
        return x + self.linear(x) * multiplier


def make_networks(widths, seed=0, **settings):
    """{width: (k, v)} A1111 networks with random weights."""
    torch.manual_seed(seed)
    return {width: (A1111Network(width, **settings), A1111Network(width, **settings)) for width in widths}


def write_a1111(path, networks, **entries):
    """torch.save of the dict A1111's Hypernetwork.save writes: width -> (k state, v state), then settings."""
    data = {width: (k.state_dict(), v.state_dict()) for width, (k, v) in networks.items()}
    torch.save({**data, **entries}, path)
    return path


ACTIVATIONS = {"relu": nn.ReLU, "mish": nn.Mish, "swish": nn.Hardswish, "prelu": nn.PReLU, "tanh": nn.Tanh}

CONFIGS = {
    "relu, layer norm and dropout, [1, 2, 2, 1]": dict(
        structure=[1, 2, 2, 1],
        activation="relu",
        layer_norm=True,
        dropout=[0, 0.3, 0.3, 0],
        activate_output=False,
    ),
    "mish with the output activated, [1, 1.5, 1]": dict(
        structure=[1, 1.5, 1], activation="mish", activate_output=True
    ),
    "swish is A1111's Hardswish": dict(structure=[1, 2, 1], activation="swish", activate_output=False),
    "prelu, whose slope is a weight": dict(structure=[1, 2, 1], activation="prelu", activate_output=True),
    "linear": dict(structure=[1, 2, 1], activation="linear", activate_output=True),
}


def settings_of(config):
    """(A1111Network keyword arguments, the file's settings entries)."""
    name = config["activation"]
    network = {
        "structure": config["structure"],
        "activation": ACTIVATIONS.get(name),
        "layer_norm": config.get("layer_norm", False),
        "dropout": config.get("dropout"),
        "activate_output": config["activate_output"],
    }
    entries = {
        "layer_structure": config["structure"],
        "activation_func": name,
        "is_layer_norm": config.get("layer_norm", False),
        "activate_output": config["activate_output"],
        "use_dropout": config.get("dropout") is not None,
        "dropout_structure": config.get("dropout"),
        "weight_initialization": "Normal",
        "step": 1000,
        "name": "trained-name",
    }
    return network, entries


def tiny_pipe(library=None):
    pipe = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    pipe.library = library
    return pipe


def attention_modules(unet) -> dict[str, CrossAttention]:
    return {name: module for name, module in unet.named_modules() if isinstance(module, CrossAttention)}


def model_widths(unet) -> list[int]:
    """The tiny model's widths, read from it: the context width and the transformer channel widths."""
    modules = attention_modules(unet)
    context = {module.to_k.in_features for name, module in modules.items() if name.endswith("attn2")}
    channels = {module.to_k.in_features for name, module in modules.items() if name.endswith("attn1")}
    return sorted(context | channels)


def reference_attention(attention: CrossAttention, x, k_source, v_source):
    """Multi-head attention written out: softmax(q kᵀ / √d) v per head, then to_out."""
    heads = attention.heads

    def split(tensor):
        return tensor.unflatten(-1, (heads, -1)).transpose(1, 2)

    q, k, v = split(attention.to_q(x)), split(attention.to_k(k_source)), split(attention.to_v(v_source))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return attention.to_out((weights @ v).transpose(1, 2).flatten(2))


def probe(unet, seed=1):
    """One cross-attention and one self-attention layer of each width, with inputs."""
    generator = torch.Generator().manual_seed(seed)
    cases = []
    seen = set()
    for name, module in attention_modules(unet).items():
        kind = name.rsplit(".", 1)[-1]
        width = module.to_k.in_features
        if (kind, width) in seen:
            continue
        seen.add((kind, width))
        x = torch.randn(2, 16, module.to_q.in_features, generator=generator)
        context = torch.randn(2, 7, width, generator=generator) if kind == "attn2" else None
        cases.append((name, module, x, context))
    return cases


def expected_output(module, x, context, chain):
    """The reference: the k and v sources through each (networks, multiplier) in turn, A1111's order."""
    k_source = v_source = x if context is None else context
    width = k_source.shape[-1]
    for networks, multiplier in chain:
        if width in networks:
            k_net, v_net = networks[width]
            k_source, v_source = k_net(k_source, multiplier), v_net(v_source, multiplier)
    return reference_attention(module, x, k_source, v_source)


@pytest.fixture
def library(tmp_path) -> ModelLibrary:
    (tmp_path / "models" / "hypernetworks").mkdir(parents=True)
    return ModelLibrary(root=tmp_path / "models")


def folder(library: ModelLibrary):
    return library.folders("hypernetworks")[0]


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_attention_matches_a1111s_formula(config, library):
    pipe = tiny_pipe(library)
    network_settings, entries = settings_of(config)
    networks = make_networks(model_widths(pipe.unet), **network_settings)
    path = write_a1111(folder(library) / "style.pt", networks, **entries)
    key = pipe.hypernetworks.add("style", 0.7)
    assert key == "style" and pipe.hypernetworks.strengths == {"style": 0.7}
    cases = probe(pipe.unet)
    assert {name.rsplit(".", 1)[-1] for name, *_ in cases} == {"attn1", "attn2"}
    for name, module, x, context in cases:
        ours = module(x, context)
        reference = expected_output(module, x, context, [(networks, 0.7)])
        plain = reference_attention(
            module, x, x if context is None else context, x if context is None else context
        )
        assert (plain - reference).abs().max() > 100 * TOLERANCE, name
        assert (ours - reference).abs().max() < TOLERANCE, name
    assert read_hypernetwork_file(path).info["name"] == "trained-name"


def test_strength_and_chaining_follow_the_formula(library):
    pipe = tiny_pipe(library)
    widths = model_widths(pipe.unet)
    first = make_networks(widths, seed=1, structure=[1, 2, 1], activation=nn.ReLU)
    second = make_networks(widths[:1], seed=2, structure=[1, 2, 1], activation=nn.Tanh, activate_output=True)
    write_a1111(folder(library) / "first.pt", first, activation_func="relu", activate_output=False)
    write_a1111(folder(library) / "second.pt", second, activation_func="tanh", activate_output=True)
    pipe.hypernetworks.add("first", 0.5)
    cases = probe(pipe.unet)
    for name, module, x, context in cases:
        expected = expected_output(module, x, context, [(first, 0.5)])
        assert (module(x, context) - expected).abs().max() < TOLERANCE, name
    pipe.hypernetworks.set_strength("first", 1.0)
    pipe.hypernetworks.add("second", 0.8)
    assert pipe.hypernetworks.strengths == {"first": 1.0, "second": 0.8}
    for name, module, x, context in cases:
        chained = expected_output(module, x, context, [(first, 1.0), (second, 0.8)])
        swapped = expected_output(module, x, context, [(second, 0.8), (first, 1.0)])
        assert (module(x, context) - chained).abs().max() < TOLERANCE, name
        if (x if context is None else context).shape[-1] in second:
            assert (chained - swapped).abs().max() > 100 * TOLERANCE, name


def test_an_identity_hypernetwork_changes_nothing_bit_for_bit(library):
    pipe = tiny_pipe(library)
    networks = make_networks(model_widths(pipe.unet), structure=[1, 2, 1], activation=nn.ReLU)
    for pair in networks.values():
        for network in pair:
            nn.init.zeros_(network.linear[-1].weight)
            nn.init.zeros_(network.linear[-1].bias)
    write_a1111(folder(library) / "identity.pt", networks, activation_func="relu", activate_output=False)
    plain = pipe.generate("a red circle", **SETTINGS)[0]
    pipe.hypernetworks.add("identity")
    assert all(module.context_patches for module in attention_modules(pipe.unet).values())
    assert pipe.generate("a red circle", **SETTINGS)[0].tobytes() == plain.tobytes()


def test_strengths_change_images_without_reading_the_file_again(library, monkeypatch):
    pipe = tiny_pipe(library)
    networks = make_networks(model_widths(pipe.unet), structure=[1, 2, 1], activation=nn.ReLU)
    write_a1111(folder(library) / "anime.pt", networks, activation_func="relu", activate_output=False)
    plain = pipe.generate("a red circle", **SETTINGS)[0]
    pipe.hypernetworks.add("anime", 1.0)
    full = pipe.generate("a red circle", **SETTINGS)[0]
    monkeypatch.setattr(
        "lienzo.pipelines.hypernetworks.read_hypernetwork_file", lambda path: pytest.fail("read again")
    )
    pipe.hypernetworks.set_strength("anime", 0.5)
    half = pipe.generate("a red circle", **SETTINGS)[0]
    pipe.hypernetworks.set_strength("anime", 1.0)
    assert pipe.generate("a red circle", **SETTINGS)[0].tobytes() == full.tobytes()
    assert len({plain.tobytes(), full.tobytes(), half.tobytes()}) == 3
    assert full.info["lienzo"]["hypernetworks"] == {"anime": pipe.hypernetworks.hashes()["anime"]}
    assert len(pipe.hypernetworks.hashes()["anime"]) == 10
    pipe.hypernetworks.remove("anime")
    assert pipe.generate("a red circle", **SETTINGS)[0].tobytes() == plain.tobytes()
    assert all(module.context_patches == () for module in attention_modules(pipe.unet).values())


def test_prompt_tags_apply_for_one_call_and_never_leak(library):
    pipe = tiny_pipe(library)
    networks = make_networks(model_widths(pipe.unet), structure=[1, 2, 1], activation=nn.ReLU)
    write_a1111(folder(library) / "anime.pt", networks, activation_func="relu", activate_output=False)
    plain = pipe.generate("a red circle", **SETTINGS)[0]
    tagged = pipe.generate("a red circle <hypernet:anime:0.5>", **SETTINGS)[0]
    again = pipe.generate("a red circle", **SETTINGS)[0]
    assert plain.tobytes() == again.tobytes() != tagged.tobytes()
    assert pipe.hypernetworks.strengths == {} and pipe.unet_patcher.hooks == {}
    assert all("context_patches" not in vars(module) for module in attention_modules(pipe.unet).values())
    record = tagged.info["lienzo"]
    assert record["prompt"] == "a red circle <hypernet:anime:0.5>" and list(record["hypernetworks"]) == [
        "anime"
    ]
    assert plain.info["lienzo"]["hypernetworks"] == {}
    assert 'Hypernet hashes: "anime: ' in format_parameters(record)
    assert parse_parameters(format_parameters(record))["hypernetworks"] == record["hypernetworks"]

    pipe.hypernetworks.add("anime", 0.5)
    assert pipe.generate("a red circle", **SETTINGS)[0].tobytes() == tagged.tobytes()
    other = tiny_pipe(library)
    assert other.unet is not pipe.unet
    assert all(module.context_patches == () for module in attention_modules(other.unet).values())
    assert other.generate("a red circle", **SETTINGS)[0].tobytes() == plain.tobytes()
    view = pipe.view()
    assert view.unet_patcher.hooks == {}
    assert all(module.context_patches == () for module in attention_modules(view.unet).values())
    assert any(module.context_patches for module in attention_modules(pipe.unet).values())


def test_old_linear1_linear2_files_take_a1111s_defaults(library):
    """The first files: two Linear layers named linear1/linear2, no settings ([1, 2, 1], no activation)."""
    pipe = tiny_pipe(library)
    widths = model_widths(pipe.unet)
    networks = make_networks(widths, structure=[1, 2, 1])
    old = {
        width: tuple(
            {
                "linear1.weight": net.linear[0].weight,
                "linear1.bias": net.linear[0].bias,
                "linear2.weight": net.linear[1].weight,
                "linear2.bias": net.linear[1].bias,
            }
            for net in pair
        )
        for width, pair in networks.items()
    }
    torch.save(old, folder(library) / "old.pt")
    contents = read_hypernetwork_file(folder(library) / "old.pt")
    assert contents.activation == "linear" and contents.activate_output is True
    assert contents.layer_structure == (1, 2, 1) and contents.widths == tuple(widths)
    pipe.hypernetworks.add("old")
    for name, module, x, context in probe(pipe.unet):
        expected = expected_output(module, x, context, [(networks, 1.0)])
        assert (module(x, context) - expected).abs().max() < TOLERANCE, name


def test_a_missing_activate_output_means_true_as_in_a1111(library):
    pipe = tiny_pipe(library)
    networks = make_networks(
        model_widths(pipe.unet), structure=[1, 2, 1], activation=nn.Tanh, activate_output=True
    )
    write_a1111(folder(library) / "tanh.pt", networks, activation_func="tanh", layer_structure=[1, 2, 1])
    assert read_hypernetwork_file(folder(library) / "tanh.pt").activate_output is True
    pipe.hypernetworks.add("tanh")
    for name, module, x, context in probe(pipe.unet):
        expected = expected_output(module, x, context, [(networks, 1.0)])
        assert (module(x, context) - expected).abs().max() < TOLERANCE, name


class Sneaky:
    def __reduce__(self):
        return (print, ("this ran",))


def test_unsafe_corrupt_and_foreign_files_are_clear_errors(library, tmp_path, capsys):
    pipe = tiny_pipe(library)
    hypernetworks = folder(library)
    torch.save({768: ({}, {}), "optional_info": Sneaky()}, hypernetworks / "sneaky.pt")
    with pytest.raises(UnsafeCheckpointError, match="refused: its pickle asks for print"):
        pipe.hypernetworks.add("sneaky")
    assert "this ran" not in capsys.readouterr().out
    (hypernetworks / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CorruptCheckpointError, match="broken.pt is damaged"):
        pipe.hypernetworks.add("broken")
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, hypernetworks / "lora.pt")
    with pytest.raises(CorruptCheckpointError, match="no integer width keys"):
        pipe.hypernetworks.add("lora")
    widths = model_widths(pipe.unet)
    networks = make_networks(widths, structure=[1, 3, 1])
    write_a1111(hypernetworks / "mislabeled.pt", networks, layer_structure=[1, 2, 1])
    with pytest.raises(CorruptCheckpointError, match="do not match its layer_structure"):
        pipe.hypernetworks.add("mislabeled")
    write_a1111(
        hypernetworks / "odd.pt", make_networks(widths, structure=[1, 2, 1]), activation_func="frobnicate"
    )
    with pytest.raises(InvalidArgumentError, match="activation_func 'frobnicate' is unknown"):
        pipe.hypernetworks.add("odd")
    write_a1111(
        hypernetworks / "softmax.pt", make_networks(widths, structure=[1, 2, 1]), activation_func="softmax"
    )
    with pytest.raises(InvalidArgumentError, match="'softmax' is refused"):
        pipe.hypernetworks.add("softmax")
    write_a1111(hypernetworks / "sd15.pt", make_networks([768, 320], structure=[1, 2, 1]))
    with pytest.raises(InvalidArgumentError, match="widths 320, 768, but this model's attention layers"):
        pipe.hypernetworks.add("sd15")
    with pytest.raises(ModelNotFoundError, match="hypernetwork"):
        pipe.generate("a cat <hypernet:missing>", **SETTINGS)
    with pytest.raises(InvalidArgumentError, match="no hypernetwork 'nothing' is applied"):
        pipe.hypernetworks.set_strength("nothing", 1.0)
    assert pipe.hypernetworks.strengths == {} and pipe.unet_patcher.hooks == {}


def test_tags_and_old_a1111_parameters():
    assert extract_hypernet_tags("a cat <hypernet:anime:0.5>, <lora:ink:0.3> <HYPERNET:sub/ink>") == (
        "a cat ,  ",
        [HypernetTag("anime", 0.5), HypernetTag("sub/ink", 1.0)],
    )
    assert extract_lora_tags("a cat <hypernet:anime:0.5> <lora:ink:0.3>") == (
        "a cat  ",
        [LoraTag("ink", 0.3, 0.3)],
    )
    for bad in ("<hypernet:anime:strong>", "<hypernet::1>", "<hypernet:anime:1:2>", "<hypernet:anime:te=1>"):
        with pytest.raises(InvalidArgumentError, match="hypernet"):
            extract_hypernet_tags(bad)
    old = "a cat\nSteps: 20, Seed: 1, Hypernet: anime, Hypernet hash: 1234abcd, Hypernet strength: 0.6"
    record = parse_parameters(old)
    assert record["prompt"] == "a cat<hypernet:anime:0.6>"


def test_the_patcher_hooks_views_of_its_own():
    model = nn.ModuleDict({"attention": CrossAttention(8, 8, 2, 4), "other": nn.Linear(8, 8)})
    patcher = ModelPatcher(model)

    def double_v(k, v):
        return k, v * 2

    patcher.add_hooks("a", {"attention": double_v})
    patcher.add_hooks("b", {"attention": double_v})
    assert model["attention"].context_patches == (double_v, double_v)
    clone = patcher.clone()
    assert clone.model["attention"].context_patches == () and clone.hooks == {}
    with pytest.raises(InvalidArgumentError, match="not an attention module"):
        patcher.add_hooks("c", {"other": double_v})
    with pytest.raises(InvalidArgumentError, match="not an attention module"):
        patcher.add_hooks("c", {"missing": double_v})
    patcher.remove("a")
    assert model["attention"].context_patches == (double_v,)
    patcher.unpatch()
    assert "context_patches" not in vars(model["attention"]) and model["attention"].context_patches == ()
