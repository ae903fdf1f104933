"""CLIP text model parity with transformers, OpenCLIP key maps and config maps."""

from __future__ import annotations

import pytest
import torch
import transformers

from lienzo.errors import InvalidArgumentError, UnknownArchitectureError
from lienzo.io.keymaps.clip import (
    clip_config_from_state_dict,
    clip_config_from_transformers,
    clip_config_to_transformers,
    clip_hf_canonical,
    clip_hf_to_openclip,
    clip_openclip_to_hf,
)
from lienzo.models.clip import CLIPTextConfig, CLIPTextModel
from lienzo.models.specs import CLIP_L, OPENCLIP_BIGG, OPENCLIP_H

TOLERANCE = 1e-5


def tiny_config(hidden_act: str = "quick_gelu", projection_dim: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        hidden_act=hidden_act,
        projection_dim=projection_dim,
    )


def reference_model(config: CLIPTextConfig, seed: int = 0) -> torch.nn.Module:
    """A transformers CLIP text model with random weights, built from our config's transformers dict."""
    torch.manual_seed(seed)
    hf_config = transformers.CLIPTextConfig.from_dict(clip_config_to_transformers(config))
    if config.projection_dim is None:
        return transformers.CLIPTextModel(hf_config).eval()
    return transformers.CLIPTextModelWithProjection(hf_config).eval()


def weights_of(reference: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The reference weights in checkpoint layout (`text_model.` prefix, as diffusers folders store them)."""
    weights = {}
    for key, value in reference.state_dict().items():
        if key.endswith("position_ids"):
            continue
        weights[key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}"] = value
    return weights


def ours_from(reference: torch.nn.Module, config: CLIPTextConfig) -> CLIPTextModel:
    model = CLIPTextModel(config).eval()
    model.load_state_dict(weights_of(reference), strict=True)
    return model


def sample_ids(batch: int = 3, length: int = 77, seed: int = 1) -> torch.Tensor:
    """Random token ids framed like real prompts: start token, end token at varied positions, end padding."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49406, (batch, length), generator=generator)
    ids[:, 0] = 49406
    for row in range(batch):
        end = 1 + (row * 17 + 5) % (length - 1)
        ids[row, end:] = 49407
    return ids


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_text_model_matches_transformers(hidden_act):
    config = tiny_config(hidden_act)
    reference = reference_model(config)
    model = ours_from(reference, config)
    ids = sample_ids()
    with torch.no_grad():
        expected = reference(ids, output_hidden_states=True)
        output = model(ids)
        assert output.hidden.shape == (3, 77, 32)
        assert max_error(output.hidden, expected.last_hidden_state) <= TOLERANCE
        assert max_error(output.pooled, expected.pooler_output) <= TOLERANCE
        final_layer_norm = getattr(reference, "text_model", reference).final_layer_norm
        for layer in (-2, -3, 0, 1):
            raw = model(ids, hidden_layer=layer, final_norm=False, want_pooled=False)
            assert raw.pooled is None
            assert max_error(raw.hidden, expected.hidden_states[layer]) <= TOLERANCE
            normed = model(ids, hidden_layer=layer)
            assert max_error(normed.hidden, final_layer_norm(expected.hidden_states[layer])) <= TOLERANCE
            assert max_error(normed.pooled, expected.pooler_output) <= TOLERANCE


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_text_model_with_projection_matches_transformers(hidden_act):
    config = tiny_config(hidden_act, projection_dim=24)
    reference = reference_model(config, seed=3)
    model = ours_from(reference, config)
    ids = sample_ids(seed=4)
    with torch.no_grad():
        expected = reference(ids, output_hidden_states=True)
        output = model(ids, hidden_layer=-2, final_norm=False)
    assert output.pooled.shape == (3, 24)
    assert max_error(output.pooled, expected.text_embeds) <= TOLERANCE
    assert max_error(output.hidden, expected.hidden_states[-2]) <= TOLERANCE


def test_state_dict_keys_are_transformers_keys():
    with_projection = tiny_config(projection_dim=16)
    native = reference_model(with_projection).state_dict()
    expected = {key for key in native if not key.endswith("position_ids")}
    assert set(CLIPTextModel(with_projection).state_dict()) == expected
    keys = set(CLIPTextModel(tiny_config()).state_dict())
    assert keys == expected - {"text_projection.weight"}


def test_canonical_keys_accept_both_transformers_layouts():
    config = tiny_config()
    plain = reference_model(config).state_dict()
    canonical = clip_hf_canonical(plain)
    assert set(canonical) == set(CLIPTextModel(config).state_dict())
    assert clip_hf_canonical(canonical).keys() == canonical.keys()


def test_hidden_layer_out_of_range_is_rejected():
    model = CLIPTextModel(tiny_config())
    ids = sample_ids(batch=1)
    with pytest.raises(InvalidArgumentError, match="outside"):
        model(ids, hidden_layer=-5)
    with pytest.raises(InvalidArgumentError, match="outside"):
        model(ids, hidden_layer=4)


def test_unknown_activation_is_rejected():
    with pytest.raises(InvalidArgumentError, match="hidden_act"):
        CLIPTextModel(
            CLIPTextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, hidden_act="relu6")
        )


def test_openclip_key_map_round_trip_is_exact():
    config = tiny_config("gelu", projection_dim=24)
    hf = weights_of(reference_model(config))
    openclip = clip_hf_to_openclip(hf)
    assert "transformer.resblocks.2.attn.in_proj_weight" in openclip
    assert openclip["text_projection"].shape == (32, 24)
    assert openclip["positional_embedding"].shape == (77, 32)
    back = clip_openclip_to_hf({**openclip, "logit_scale": torch.tensor(4.6)})
    assert set(back) == set(hf)
    assert all(torch.equal(back[key], hf[key]) for key in hf)


def test_in_proj_stacks_query_key_value_like_multihead_attention():
    """OpenCLIP attention is nn.MultiheadAttention, whose in_proj is cat(q, k, v); check against it."""
    config = tiny_config()
    model = ours_from(reference_model(config), config)
    openclip = clip_hf_to_openclip(weights_of(model))
    attention = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    attention.load_state_dict(
        {
            "in_proj_weight": openclip["transformer.resblocks.1.attn.in_proj_weight"],
            "in_proj_bias": openclip["transformer.resblocks.1.attn.in_proj_bias"],
            "out_proj.weight": openclip["transformer.resblocks.1.attn.out_proj.weight"],
            "out_proj.bias": openclip["transformer.resblocks.1.attn.out_proj.bias"],
        }
    )
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(5))
    causal = torch.triu(torch.full((9, 9), float("-inf")), diagonal=1)
    with torch.no_grad():
        expected, _ = attention(x, x, x, attn_mask=causal, need_weights=False)
        ours = model.text_model.encoder.layers[1].self_attn(x)
    assert max_error(ours, expected) <= TOLERANCE


def test_openclip_layout_gives_the_same_outputs():
    config = tiny_config("gelu", projection_dim=24)
    reference = reference_model(config, seed=7)
    openclip = clip_hf_to_openclip(weights_of(reference))
    model = CLIPTextModel(config).eval()
    model.load_state_dict(clip_openclip_to_hf(openclip), strict=True)
    ids = sample_ids(seed=8)
    with torch.no_grad():
        expected = reference(ids, output_hidden_states=True)
        output = model(ids)
    assert max_error(output.hidden, expected.last_hidden_state) <= TOLERANCE
    assert max_error(output.pooled, expected.text_embeds) <= TOLERANCE


def test_unknown_keys_are_reported():
    with pytest.raises(UnknownArchitectureError, match="prefix"):
        clip_openclip_to_hf({"cond_stage_model.model.token_embedding.weight": torch.zeros(2, 2)})
    hf = weights_of(reference_model(tiny_config()))
    del hf["text_model.encoder.layers.0.self_attn.k_proj.weight"]
    with pytest.raises(UnknownArchitectureError, match="unpaired"):
        clip_hf_to_openclip(hf)


@pytest.mark.parametrize(
    "config", [tiny_config(), tiny_config("gelu", projection_dim=24), CLIP_L, OPENCLIP_BIGG]
)
def test_transformers_config_round_trip(config):
    as_dict = clip_config_to_transformers(config)
    assert clip_config_from_transformers(as_dict) == config
    architecture = "CLIPTextModel" if config.projection_dim is None else "CLIPTextModelWithProjection"
    assert as_dict["architectures"] == [architecture]
    hf_config = transformers.CLIPTextConfig.from_dict(as_dict)
    assert (hf_config.hidden_size, hf_config.num_hidden_layers) == (
        config.hidden_size,
        config.num_hidden_layers,
    )


def test_config_from_diffusers_style_dicts():
    sd2 = {
        "architectures": ["CLIPTextModel"],
        "hidden_act": "gelu",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 23,
        "projection_dim": 512,
    }
    assert clip_config_from_transformers(sd2) == OPENCLIP_H
    full_clip = {"architectures": ["CLIPModel"], "projection_dim": 768, "text_config": {"hidden_size": 768}}
    assert clip_config_from_transformers(full_clip) == CLIP_L


def test_config_from_state_dict():
    config = tiny_config("gelu", projection_dim=24)
    weights = weights_of(reference_model(config))
    assert clip_config_from_state_dict(weights, heads=4, hidden_act="gelu") == config
    inferred = clip_config_from_state_dict(weights)
    assert (inferred.num_attention_heads, inferred.hidden_act) == (1, "quick_gelu")
    with pytest.raises(UnknownArchitectureError, match="clip_openclip_to_hf"):
        clip_config_from_state_dict(clip_hf_to_openclip(weights))


@pytest.mark.slow
@pytest.mark.parametrize("config", [CLIP_L, OPENCLIP_H, OPENCLIP_BIGG], ids=["clip-l", "openclip-h", "bigg"])
def test_full_size_parity(config):
    reference = reference_model(config, seed=11)
    model = ours_from(reference, config)
    ids = sample_ids(batch=2, seed=12)
    with torch.no_grad():
        expected = reference(ids, output_hidden_states=True)
        output = model(ids, hidden_layer=-2, final_norm=False)
        last = model(ids, want_pooled=False)
    assert max_error(output.hidden, expected.hidden_states[-2]) <= 1e-4
    assert max_error(last.hidden, expected.last_hidden_state) <= 1e-4
    pooled = expected.text_embeds if config.projection_dim else expected.pooler_output
    assert max_error(output.pooled, pooled) <= 1e-4
