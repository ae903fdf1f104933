"""Adapter files: every key layout read, grouped by module and resolved onto lienzo's parameters.

The oracle is the diffusers / transformers model the tiny lienzo pipeline was loaded from: a file module
named after a diffusers (or transformers) module must land on the lienzo parameter holding that module's
very weights, with parts whose shapes make that weight's shape.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import lienzo
from lienzo.errors import CorruptCheckpointError, InvalidArgumentError, UnsafeCheckpointError
from lienzo.io.adapter_files import (
    AdapterFile,
    Resolution,
    parameter_shapes,
    read_adapter_file,
    resolve_targets,
)
from lienzo.models.specs import FamilySpec
from tiny_models import tiny_pipeline_folder

RANK = 2
QKV = ("q_proj", "k_proj", "v_proj")
OPENCLIP = {"self_attn.out_proj": "attn_out_proj", "mlp.fc1": "mlp_c_fc", "mlp.fc2": "mlp_c_proj"}


@dataclass
class Tiny:
    """A tiny lienzo pipeline and, as the oracle, the diffusers/transformers modules it was loaded from."""

    spec: FamilySpec
    unet: dict[str, torch.Tensor]
    texts: list[dict[str, torch.Tensor]]
    unet_shapes: dict[str, torch.Size]
    text_shapes: list[dict[str, torch.Size]]
    diffusers_unet: dict[str, torch.Tensor]
    """diffusers module name -> weight, for every Linear and Conv2d."""
    hf_texts: list[dict[str, torch.Tensor]]
    """per text encoder: transformers module name as the model names it -> weight, for every Linear."""

    def resolve(self, adapter: AdapterFile) -> Resolution:
        return resolve_targets(adapter, self.spec, self.unet_shapes, self.text_shapes)


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    kinds = (nn.Linear, nn.Conv2d)
    return {name: m.weight.detach() for name, m in module.named_modules() if isinstance(m, kinds)}


@functools.cache
def tiny(family: str) -> Tiny:
    import diffusers
    import transformers

    folder = tiny_pipeline_folder(family)
    pipe = lienzo.load(folder, device="cpu", dtype=torch.float32)
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet")
    names = ["text_encoder", "text_encoder_2"] if len(pipe.text_encoders) == 2 else ["text_encoder"]
    hf_texts = []
    for name in names:
        config = json.loads((folder / name / "config.json").read_text())
        model = getattr(transformers, config["architectures"][0]).from_pretrained(folder / name)
        hf_texts.append(_weights(model))
    return Tiny(
        pipe.spec,
        pipe.unet.state_dict(),
        [encoder.state_dict() for encoder in pipe.text_encoders],
        parameter_shapes(pipe.unet),
        [parameter_shapes(encoder) for encoder in pipe.text_encoders],
        _weights(unet),
        hf_texts,
    )


def lora_parts(shape: torch.Size, generator: torch.Generator, rank: int = RANK) -> dict[str, torch.Tensor]:
    """Random kohya LoRA parts for a weight of `shape` (linear, or conv with a (r, in, k, k) down)."""
    down = torch.randn(rank, *shape[1:], generator=generator)
    up = torch.randn(shape[0], rank, *(1,) * (len(shape) - 2), generator=generator)
    return {"lora_down.weight": down, "lora_up.weight": up}


def hf_canonical(name: str) -> str:
    """transformers 5 drops `text_model.` from a plain CLIPTextModel; kohya names keep it."""
    return name if name.startswith(("text_model.", "text_projection")) else "text_model." + name


def kohya_tensors(model: Tiny, unet_names: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A kohya LoRA on every Linear/Conv2d: UNet under diffusers or ldm names, text under HF names."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    if unet_names == "diffusers":
        unet_modules = {name: weight.shape for name, weight in model.diffusers_unet.items()}
    else:
        unet_modules = {
            name.removesuffix(".weight"): shape
            for name, shape in model.unet_shapes.items()
            if name.endswith(".weight") and len(shape) >= 2
        }
    for name, shape in unet_modules.items():
        for part, tensor in lora_parts(shape, generator).items():
            tensors[f"lora_unet_{name.replace('.', '_')}.{part}"] = tensor
        tensors[f"lora_unet_{name.replace('.', '_')}.alpha"] = torch.tensor(1.0)
    prefixes = ["lora_te_"] if len(model.hf_texts) == 1 else ["lora_te1_", "lora_te2_"]
    for prefix, weights in zip(prefixes, model.hf_texts, strict=True):
        for name, weight in weights.items():
            key = prefix + hf_canonical(name).replace(".", "_")
            for part, tensor in lora_parts(weight.shape, generator).items():
                tensors[f"{key}.{part}"] = tensor
    return tensors


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path), metadata=metadata)
    return path


def assert_fits(target) -> None:
    """up @ down makes exactly the target weight's shape."""
    up, down = target.parts["lora_up.weight"], target.parts["lora_down.weight"]
    assert (up.shape[0], *down.shape[1:]) == target.weight_shape
    delta = up.flatten(1) @ down.flatten(1)
    assert delta.reshape(target.weight_shape).shape == target.weight_shape


def lienzo_weight(model: Tiny, target) -> torch.Tensor:
    weights = model.unet if target.component == "unet" else model.texts[target.component[1]]
    return torch.cat([weights[name] for name in target.params["weight"]])


def by_weight(resolution: Resolution) -> dict[tuple, dict[str, torch.Tensor]]:
    return {(t.component, t.params["weight"]): t.parts for t in resolution.targets}


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_kohya_file_lands_every_module_on_the_weight_diffusers_and_transformers_hold(tmp_path, family):
    model = tiny(family)
    tensors = kohya_tensors(model, "diffusers")
    adapter = read_adapter_file(write(tmp_path / "lora.safetensors", tensors, {"ss_network_dim": "2"}))
    assert adapter.metadata["ss_network_dim"] == "2"
    assert len(adapter.modules) == len(model.diffusers_unet) + len(model.hf_texts[0])
    targets = {target.key: target for target in model.resolve(adapter).targets}
    assert len(targets) == len(adapter.modules)
    for name, weight in model.diffusers_unet.items():
        target = targets[f"lora_unet_{name.replace('.', '_')}"]
        assert target.component == "unet" and len(target.params["weight"]) == 1
        assert torch.equal(lienzo_weight(model, target), weight), name
        assert set(target.parts) == {"lora_down.weight", "lora_up.weight", "alpha"}
        assert_fits(target)
    for name, weight in model.hf_texts[0].items():
        target = targets["lora_te_" + hf_canonical(name).replace(".", "_")]
        assert target.component == ("text", 0)
        assert target.params["weight"] == (hf_canonical(name) + ".weight",)
        assert torch.equal(lienzo_weight(model, target), weight), name
        assert_fits(target)


def test_kohya_sdxl_file_uses_ldm_names_and_two_text_encoders(tmp_path):
    model = tiny("sdxl")
    tensors = kohya_tensors(model, "ldm")
    resolution = model.resolve(read_adapter_file(write(tmp_path / "xl.safetensors", tensors)))
    unet_targets = resolution.for_component("unet")
    assert len(unet_targets) == len({key.split(".")[0] for key in tensors if key.startswith("lora_unet_")})
    for target in unet_targets:
        (param,) = target.params["weight"]
        assert target.key == "lora_unet_" + param.removesuffix(".weight").replace(".", "_")
        assert_fits(target)
    assert any(t.key == "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k" for t in unet_targets)
    assert any(t.key == "lora_unet_label_emb_0_0" for t in unet_targets)
    for index, prefix in enumerate(["lora_te1_", "lora_te2_"]):
        targets = resolution.for_component(("text", index))
        assert len(targets) == len(model.hf_texts[index])
        for target in targets:
            assert target.key.startswith(prefix)
            assert torch.equal(
                lienzo_weight(model, target),
                model.hf_texts[index][_hf_name_of(model, index, target.params["weight"][0])],
            )
            assert_fits(target)
    assert any(
        t.params["weight"] == ("text_projection.weight",) for t in resolution.for_component(("text", 1))
    )


def _hf_name_of(model: Tiny, index: int, param: str) -> str:
    module = param.removesuffix(".weight")
    return module if module in model.hf_texts[index] else module.removeprefix("text_model.")


def test_sd2_openclip_text_keys_fuse_q_k_v_and_rename_the_mlp(tmp_path):
    model = tiny("sd2")
    generator = torch.Generator().manual_seed(1)
    width = model.spec.text_encoders[0].config.hidden_size
    layers = model.spec.text_encoders[0].config.num_hidden_layers
    tensors = {}
    for layer in range(layers):
        key = f"lora_te_model_transformer_resblocks_{layer}_attn_in_proj"
        for part, tensor in lora_parts(torch.Size((3 * width, width)), generator).items():
            tensors[f"{key}.{part}"] = tensor
        for hf, openclip in OPENCLIP.items():
            shape = model.text_shapes[0][f"text_model.encoder.layers.{layer}.{hf}.weight"]
            for part, tensor in lora_parts(shape, generator).items():
                tensors[f"lora_te_model_transformer_resblocks_{layer}_{openclip}.{part}"] = tensor
    resolution = model.resolve(read_adapter_file(write(tmp_path / "openclip.safetensors", tensors)))
    targets = {target.key: target for target in resolution.targets}
    assert len(targets) == 4 * layers
    for layer in range(layers):
        prefix = f"text_model.encoder.layers.{layer}."
        fused = targets[f"lora_te_model_transformer_resblocks_{layer}_attn_in_proj"]
        assert fused.params == {
            "weight": tuple(f"{prefix}self_attn.{name}.weight" for name in QKV),
            "bias": tuple(f"{prefix}self_attn.{name}.bias" for name in QKV),
        }
        assert fused.weight_shape == (3 * width, width)
        assert_fits(fused)
        for hf, openclip in OPENCLIP.items():
            target = targets[f"lora_te_model_transformer_resblocks_{layer}_{openclip}"]
            assert target.params["weight"] == (f"{prefix}{hf}.weight",)
            assert_fits(target)


def test_lycoris_parts_are_grouped_and_checked_against_the_weights(tmp_path):
    model = tiny("sd1")
    generator = torch.Generator().manual_seed(2)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    tensors, expected = {}, {}
    modules = [
        name.removesuffix(".weight") for name, shape in model.unet_shapes.items() if name.endswith(".weight")
    ]
    for index, module in enumerate(modules):
        shape = model.unet_shapes[module + ".weight"]
        out, rest = shape[0], math.prod(shape[1:])
        bias = module + ".bias" in model.unet_shapes
        if len(shape) == 1:
            parts = {"w_norm": randn(out), **({"b_norm": randn(out)} if bias else {})}
        elif index % 5 == 0:
            parts = {"hada_w1_a": randn(out, 2), "hada_w1_b": randn(2, rest)}
            parts |= {"hada_w2_a": randn(out, 2), "hada_w2_b": randn(2, rest), "alpha": torch.tensor(2.0)}
        elif index % 5 == 1 and out % 2 == 0:
            parts = {"lokr_w1": randn(2, 1), "lokr_w2_a": randn(out // 2, 2), "lokr_w2_b": randn(2, rest)}
        elif index % 5 == 2:
            parts = {"diff": randn(*shape), **({"diff_b": randn(out)} if bias else {})}
        elif index % 5 == 3:
            parts = {"weight": randn(shape[1]), "on_input": torch.tensor(True)}
        else:
            parts = lora_parts(shape, generator) | {"dora_scale": randn(out, *(1,) * (len(shape) - 1))}
            if len(shape) == 4 and shape[2] == 3:
                parts["lora_down.weight"] = randn(RANK, shape[1], 1, 1)
                parts["lora_mid.weight"] = randn(RANK, RANK, 3, 3)
        key = ("lycoris_" if index % 2 else "lora_unet_") + module.replace(".", "_")
        tensors |= {f"{key}.{part}": tensor for part, tensor in parts.items()}
        expected[key] = (module, parts)
    adapter = read_adapter_file(write(tmp_path / "lycoris.safetensors", tensors))
    targets = {target.key: target for target in model.resolve(adapter).targets}
    assert set(targets) == set(expected)
    for key, (module, parts) in expected.items():
        assert targets[key].params["weight"] == (module + ".weight",)
        assert set(targets[key].parts) == set(parts)
        assert all(torch.equal(targets[key].parts[name], tensor) for name, tensor in parts.items())

    loha = next(key for key, (_, parts) in expected.items() if "hada_w1_b" in parts)
    tensors[f"{loha}.hada_w1_b"] = randn(2, 7)
    broken = read_adapter_file(write(tmp_path / "broken.safetensors", tensors))
    with pytest.raises(InvalidArgumentError, match=rf"1 of {len(expected)} modules .* do not fit .*{loha}"):
        model.resolve(broken)


def _peft_unet(model: Tiny, generator: torch.Generator) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, weight in model.diffusers_unet.items():
        parts = lora_parts(weight.shape, generator)
        tensors[f"{name}.lora_A.weight"] = parts["lora_down.weight"]
        tensors[f"{name}.lora_B.weight"] = parts["lora_up.weight"]
    return tensors


def _peft_text(weights: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, weight in weights.items():
        parts = lora_parts(weight.shape, generator)
        tensors[f"{name}.lora_A.weight"] = parts["lora_down.weight"]
        tensors[f"{name}.lora_B.weight"] = parts["lora_up.weight"]
    return tensors


def assert_peft_resolution(model: Tiny, resolution: Resolution, tensors: dict[str, torch.Tensor]) -> None:
    """Every PEFT module lands on the weight its diffusers/transformers module holds, A as down, B as up."""
    targets = {target.key: target for target in resolution.targets}
    assert len(targets) == len({key.rsplit(".lora_", 1)[0] for key in tensors})
    components = {"unet": (model.diffusers_unet, "unet"), "text_encoder": (model.hf_texts[0], ("text", 0))}
    if len(model.hf_texts) == 2:
        components["text_encoder_2"] = (model.hf_texts[1], ("text", 1))
    for prefix, (weights, component) in components.items():
        for name, weight in weights.items():
            target = targets[f"{prefix}.{name}"]
            assert target.component == component
            assert torch.equal(lienzo_weight(model, target), weight), name
            assert torch.equal(target.parts["lora_down.weight"], tensors[f"{prefix}.{name}.lora_A.weight"])
            assert torch.equal(target.parts["lora_up.weight"], tensors[f"{prefix}.{name}.lora_B.weight"])
            assert_fits(target)


def test_peft_file_takes_alphas_from_its_metadata_and_dora_magnitudes(tmp_path):
    model = tiny("sd1")
    generator = torch.Generator().manual_seed(3)
    unet = _peft_unet(model, generator)
    text = _peft_text(model.hf_texts[0], generator)
    tensors = {f"unet.{key}": value for key, value in unet.items()}
    tensors |= {f"text_encoder.{key}": value for key, value in text.items()}
    magnitude = torch.rand(model.diffusers_unet["conv_in"].shape[0], generator=generator)
    tensors["unet.conv_in.lora_magnitude_vector"] = magnitude
    patterned = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    config = {
        "unet.r": RANK,
        "unet.lora_alpha": 4,
        "unet.alpha_pattern": {patterned: 8},
        "text_encoder.r": RANK,
        "text_encoder.lora_alpha": 3,
        "text_encoder.use_rslora": True,
    }
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(config)}
    resolution = model.resolve(read_adapter_file(write(tmp_path / "peft.safetensors", tensors, metadata)))
    assert_peft_resolution(model, resolution, {k: v for k, v in tensors.items() if "magnitude" not in k})
    targets = {target.key: target for target in resolution.targets}
    assert targets[f"unet.{patterned}"].parts["alpha"].item() == 8
    assert targets["unet.conv_out"].parts["alpha"].item() == 4
    text_alpha = targets["text_encoder.encoder.layers.0.mlp.fc1"].parts["alpha"].item()
    assert text_alpha == pytest.approx(3 * math.sqrt(RANK))
    assert torch.equal(targets["unet.conv_in"].parts["dora_scale"], magnitude)

    single = {key.removeprefix("unet."): value for key, value in tensors.items() if key.startswith("unet.")}
    one_model = {"lora_adapter_metadata": json.dumps({"r": RANK, "lora_alpha": 2})}
    old_layout = model.resolve(read_adapter_file(write(tmp_path / "one.safetensors", single, one_model)))
    assert len(old_layout.targets) == len(model.diffusers_unet)
    assert all(target.parts["alpha"].item() == 2 for target in old_layout.targets)

    del metadata["lora_adapter_metadata"]
    plain = model.resolve(read_adapter_file(write(tmp_path / "plain.safetensors", tensors, metadata)))
    assert all("alpha" not in target.parts for target in plain.targets)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_file_saved_by_diffusers_resolves(tmp_path, family):
    import diffusers

    model = tiny(family)
    generator = torch.Generator().manual_seed(4)
    layers = {"unet_lora_layers": _peft_unet(model, generator)}
    layers["text_encoder_lora_layers"] = _peft_text(model.hf_texts[0], generator)
    pipeline = diffusers.StableDiffusionPipeline
    if family == "sdxl":
        layers["text_encoder_2_lora_layers"] = _peft_text(model.hf_texts[1], generator)
        pipeline = diffusers.StableDiffusionXLPipeline
    pipeline.save_lora_weights(
        tmp_path, **layers, unet_lora_adapter_metadata={"r": RANK, "lora_alpha": 1.0}, safe_serialization=True
    )
    path = tmp_path / "pytorch_lora_weights.safetensors"
    adapter = read_adapter_file(path)
    tensors = {}
    for argument, prefix in [
        ("unet_lora_layers", "unet"),
        ("text_encoder_lora_layers", "text_encoder"),
        ("text_encoder_2_lora_layers", "text_encoder_2"),
    ]:
        tensors |= {f"{prefix}.{key}": value for key, value in layers.get(argument, {}).items()}
    resolution = model.resolve(adapter)
    assert_peft_resolution(model, resolution, tensors)
    for target in resolution.targets:
        assert ("alpha" in target.parts) == (target.component == "unet")


def test_kohya_file_converted_by_diffusers_resolves_like_the_original(tmp_path):
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers
    from diffusers.utils.state_dict_utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    model = tiny("sd1")
    kohya = kohya_tensors(model, "diffusers", seed=5)
    original = by_weight(model.resolve(read_adapter_file(write(tmp_path / "kohya.safetensors", kohya))))
    legacy, alphas = _convert_non_diffusers_lora_to_diffusers(dict(kohya))
    assert any(".processor.to_q_lora.down.weight" in key for key in legacy)
    assert any("self_attn.to_out_lora.up.weight" in key for key in legacy)
    assert any("mlp.fc1.lora_linear_layer.down.weight" in key for key in legacy)
    unprefixed = {
        key.removeprefix("unet."): value for key, value in legacy.items() if key.startswith("unet.")
    }
    unet_peft = convert_unet_state_dict_to_peft(unprefixed)
    text_peft = convert_state_dict_to_peft({k: v for k, v in legacy.items() if k.startswith("text_encoder.")})
    peft = {f"unet.{key}": value for key, value in unet_peft.items()} | text_peft
    for name, tensors in [("legacy", legacy), ("old-unprefixed", unprefixed), ("peft", peft)]:
        resolution = model.resolve(read_adapter_file(write(tmp_path / f"{name}.safetensors", tensors)))
        converted = by_weight(resolution)
        expected = (
            original if name != "old-unprefixed" else {k: v for k, v in original.items() if k[0] == "unet"}
        )
        assert converted.keys() == expected.keys(), name
        for place, parts in converted.items():
            for part in ("lora_down.weight", "lora_up.weight"):
                assert torch.equal(parts[part], expected[place][part]), (name, place)


def test_sdxl_file_on_sd1_names_both_families(tmp_path):
    xl = kohya_tensors(tiny("sdxl"), "ldm")
    adapter = read_adapter_file(write(tmp_path / "xl.safetensors", xl))
    with pytest.raises(InvalidArgumentError) as raised:
        tiny("sd1").resolve(adapter)
    message = str(raised.value)
    assert "\n" not in message
    assert f"of {len(adapter.modules)} modules" in message
    assert "looks like an sdxl adapter" in message and "not sd1" in message

    sd1 = read_adapter_file(write(tmp_path / "sd1.safetensors", kohya_tensors(tiny("sd1"), "diffusers")))
    with pytest.raises(InvalidArgumentError, match="match nothing in this sdxl model"):
        tiny("sdxl").resolve(sd1)


def test_keys_that_match_nothing_are_counted_never_dropped(tmp_path):
    model = tiny("sd1")
    tensors = kohya_tensors(model, "diffusers")
    modules = len({key.split(".")[0] for key in tensors})
    tensors["lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight"] = torch.zeros(2, 4)
    tensors["lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight"] = torch.zeros(4, 2)
    tensors["some_other_thing.weight"] = torch.zeros(3)
    adapter = read_adapter_file(write(tmp_path / "extra.safetensors", tensors))
    with pytest.raises(
        InvalidArgumentError, match=rf"^2 of {modules + 2} modules in .*extra.safetensors match "
    ):
        model.resolve(adapter)


def test_shapes_that_do_not_fit_are_refused(tmp_path):
    model = tiny("sd1")
    tensors = kohya_tensors(model, "diffusers")
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    tensors[f"{key}.lora_down.weight"] = torch.zeros(RANK, 1024)
    adapter = read_adapter_file(write(tmp_path / "wide.safetensors", tensors))
    with pytest.raises(InvalidArgumentError, match=rf"1 of \d+ modules .* do not fit .*{key}.*sd2"):
        model.resolve(adapter)


def test_bundled_embeddings_are_kept_apart_from_modules(tmp_path):
    model = tiny("sd1")
    tensors = kohya_tensors(model, "diffusers")
    tensors["bundle_emb.cat.string_to_param.*"] = torch.randn(2, 32)
    tensors["bundle_emb.dog.clip_l"] = torch.randn(1, 32)
    tensors["bundle_emb.dog.clip_g"] = torch.randn(1, 48)
    adapter = read_adapter_file(write(tmp_path / "bundle.safetensors", tensors))
    assert set(adapter.embeddings) == {"cat", "dog"}
    assert set(adapter.embeddings["cat"]) == {"string_to_param.*"}
    assert set(adapter.embeddings["dog"]) == {"clip_l", "clip_g"}
    assert not any(key.startswith("bundle_emb") for key in adapter.modules)
    assert model.resolve(adapter).embeddings.keys() == {"cat", "dog"}


def test_weights_only_pickle_reads_and_a_pickle_that_needs_code_is_refused(tmp_path):
    model = tiny("sd1")
    tensors = kohya_tensors(model, "diffusers")
    torch.save(tensors, tmp_path / "lora.pt")
    adapter = read_adapter_file(tmp_path / "lora.pt")
    assert adapter.metadata == {}
    assert (
        by_weight(model.resolve(adapter)).keys()
        == by_weight(model.resolve(read_adapter_file(write(tmp_path / "lora.safetensors", tensors)))).keys()
    )

    torch.save({"lora_unet_x.alpha": torch.ones(()), "network": nn.Identity()}, tmp_path / "code.pt")
    with pytest.raises(UnsafeCheckpointError, match="could run code"):
        read_adapter_file(tmp_path / "code.pt")


def test_damaged_files_are_refused_with_what_to_do(tmp_path):
    path = write(tmp_path / "lora.safetensors", kohya_tensors(tiny("sd1"), "diffusers"))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match="re-download or re-export"):
        read_adapter_file(truncated)
    bad_json = write(
        tmp_path / "json.safetensors",
        {"unet.conv_in.lora_A.weight": torch.zeros(2, 4, 3, 3)},
        {"lora_adapter_metadata": "{not json"},
    )
    with pytest.raises(CorruptCheckpointError, match="lora_adapter_metadata"):
        read_adapter_file(bad_json)
