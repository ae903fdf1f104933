"""LoRA files on a Pipeline: parity with diffusers' own networks with the weights fused by hand
(W + m * alpha / rank * up @ down), exact restore, prompt tags and the explicit API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import lienzo
from lienzo.cli import main
from lienzo.errors import InvalidArgumentError, ModelNotFoundError
from lienzo.io.adapter_files import parameter_shapes, read_adapter_file, resolve_targets
from lienzo.io.embedding_files import load_embeddings, write_embedding_file
from lienzo.io.library import ModelLibrary
from lienzo.pipelines.generation import generate_latents
from lienzo.pipelines.metadata import format_parameters, parse_parameters, read_parameters
from lienzo.text.embeddings import EmbeddingVectors
from test_generate_parity import TOLERANCE, lienzo_setup, reference_latents, reference_pipeline
from tiny_models import tiny_pipeline_folder

RANK = 4
LORA_TYPES = (torch.nn.Linear, torch.nn.Conv2d)


def targets(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> dict[str, torch.nn.Module]:
    """Every linear and conv layer of a diffusers/transformers network by its module name."""
    return {
        name: layer
        for name, layer in module.named_modules()
        if isinstance(layer, LORA_TYPES) and not any(part in name for part in skip)
    }


def random_lora(layer: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """down (r, in[, k, k]), up (out, r[, 1, 1]) and alpha for one layer, sized to change it visibly."""
    out_features, in_features = layer.weight.shape[:2]
    kernel = layer.weight.shape[2:]
    down = torch.randn(RANK, in_features, *kernel, generator=generator) * 0.2
    up = torch.randn(out_features, RANK, *([1] * len(kernel)), generator=generator) * 0.2
    return {"down": down, "up": up, "alpha": torch.tensor(2.0)}


def fuse(layer: torch.nn.Module, lora: dict[str, torch.Tensor], multiplier: float) -> None:
    """The oracle: W += m * alpha / rank * up @ down, written from the LoRA paper's formula."""
    scale = float(lora["alpha"]) / RANK
    change = (lora["up"].flatten(1) @ lora["down"].flatten(1)).reshape(layer.weight.shape)
    with torch.no_grad():
        layer.weight += multiplier * scale * change


def text_layers(reference) -> dict[str, torch.nn.Module]:
    """A text encoder's layers under transformers' full names (transformers 5 drops `text_model.`)."""
    layers = targets(reference, skip=("embeddings", "text_projection"))
    return {
        (name if name.startswith("text_model.") else f"text_model.{name}"): layer
        for name, layer in layers.items()
    }


def kohya_file(reference, path, generator) -> dict:
    """A kohya-layout SD1 LoRA on every UNet and text-encoder layer (diffusers names, `.` -> `_`)."""
    loras = {}
    for prefix, layers in (
        ("lora_unet", targets(reference.unet)),
        ("lora_te", text_layers(reference.text_encoder)),
    ):
        for name, layer in layers.items():
            loras[(prefix, name)] = (layer, random_lora(layer, generator))
    tensors = {}
    for (prefix, name), (_, lora) in loras.items():
        key = f"{prefix}_{name.replace('.', '_')}"
        tensors |= {f"{key}.lora_down.weight": lora["down"], f"{key}.lora_up.weight": lora["up"]}
        tensors[f"{key}.alpha"] = lora["alpha"]
    save_file(tensors, path)
    return loras


def peft_file(reference, path, generator) -> dict:
    """A diffusers/PEFT-layout SDXL LoRA (lora_A / lora_B) with its alphas in `lora_adapter_metadata`."""
    components = {"unet": targets(reference.unet), "text_encoder": text_layers(reference.text_encoder)}
    components["text_encoder_2"] = text_layers(reference.text_encoder_2)
    loras, tensors = {}, {}
    for component, layers in components.items():
        for name, layer in layers.items():
            lora = random_lora(layer, generator)
            loras[(component, name)] = (layer, lora)
            key = f"{component}.{name}"
            tensors |= {f"{key}.lora_A.weight": lora["down"], f"{key}.lora_B.weight": lora["up"]}
    metadata = {"lora_adapter_metadata": '{"r": 4, "lora_alpha": 2.0}'}
    save_file(tensors, path, metadata=metadata)
    return loras


@pytest.mark.parametrize(("family", "unet", "text"), [("sd1", 0.7, 0.3), ("sdxl", 1.0, 1.0)])
def test_lora_latents_match_diffusers_with_the_weights_fused(family, unet, text, tmp_path):
    """kohya layout on SD1 (UNet and text strengths differ), diffusers/PEFT layout on SDXL (both towers)."""
    reference = reference_pipeline(family)
    path = tmp_path / "style.safetensors"
    make = kohya_file if family == "sd1" else peft_file
    loras = make(reference, path, torch.Generator().manual_seed(1))
    for (component, _), (layer, lora) in loras.items():
        fuse(layer, lora, unet if component in ("lora_unet", "unet") else text)
    pipe, options = lienzo_setup(family)
    plain = generate_latents(pipe, options, progress=False)
    pipe.loras.add(path, unet, text_strength=text)
    ours = generate_latents(pipe, options, progress=False)
    expected = reference_latents(reference, pipe, options)
    error = (ours - expected).abs().max().item()
    change = (plain - ours).abs().max().item()
    print(f"{family} LoRA latents: max abs error {error:.2e}, change from the LoRA {change:.2f}")
    assert (plain - ours).abs().max() > 100 * TOLERANCE
    assert error < TOLERANCE


@pytest.fixture
def library(tmp_path) -> ModelLibrary:
    """A models root whose loras/ holds a kohya LoRA for the tiny sd1 model."""
    reference = reference_pipeline("sd1")
    folder = tmp_path / "models" / "loras"
    folder.mkdir(parents=True)
    kohya_file(reference, folder / "ink.safetensors", torch.Generator().manual_seed(2))
    return ModelLibrary(root=tmp_path / "models")


def tiny_sd1(library: ModelLibrary):
    pipe = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    pipe.library = library
    return pipe


SETTINGS = {"width": 32, "height": 32, "steps": 2, "seed": 3, "progress": False}


def test_prompt_tags_apply_for_one_call_and_restore_every_weight_bit_for_bit(library):
    pipe = tiny_sd1(library)
    weights = {name: param for name, param in pipe.unet.named_parameters()}
    plain = pipe.generate("a cat", **SETTINGS)[0]
    tagged = pipe.generate("a cat <lora:ink:0.8>", **SETTINGS)[0]
    again = pipe.generate("a cat", **SETTINGS)[0]
    tagged_again = pipe.generate("a cat <lora:ink:0.8>", **SETTINGS)[0]
    assert plain.tobytes() == again.tobytes() != tagged.tobytes() == tagged_again.tobytes()
    assert all(param is weights[name] for name, param in pipe.unet.named_parameters())
    record = tagged.info["lienzo"]
    assert record["prompt"] == "a cat <lora:ink:0.8>" and list(record["loras"]) == ["ink"]
    assert parse_parameters(format_parameters(record))["loras"] == record["loras"]
    assert plain.info["lienzo"]["loras"] == {}


def test_the_tag_text_never_reaches_the_text_encoder(library):
    pipe = tiny_sd1(library)
    pipe.loras.add("ink", 0.0)
    with_tag = pipe.generate("a cat <lora:ink:0>", **SETTINGS)[0]
    without = pipe.generate("a cat", **SETTINGS)[0]
    assert np.array_equal(np.asarray(with_tag), np.asarray(without))


def test_explicit_strengths_change_without_reading_the_file_again(library, monkeypatch):
    pipe = tiny_sd1(library)
    key = pipe.loras.add("ink", 1.0, text_strength=0.5)
    assert key == "ink" and pipe.loras.strengths == {"ink": (1.0, 0.5)}
    full = pipe.generate("a cat", **SETTINGS)[0]
    monkeypatch.setattr("lienzo.pipelines.loras.read_adapter_file", lambda path: pytest.fail("read again"))
    pipe.loras.set_strength("ink", 0.0)
    off = pipe.generate("a cat", **SETTINGS)[0]
    pipe.loras.set_strength("ink", 1.0, text_strength=0.5)
    assert pipe.generate("a cat", **SETTINGS)[0].tobytes() == full.tobytes()
    pipe.loras.remove("ink")
    assert pipe.generate("a cat", **SETTINGS)[0].tobytes() == off.tobytes()
    other = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    other.library = library
    other.loras.add("ink")
    assert pipe.loras.strengths == {}


def test_missing_and_foreign_loras_are_clear_errors(library, tmp_path):
    pipe = tiny_sd1(library)
    with pytest.raises(ModelNotFoundError, match="no LoRA named 'inc'.*loras"):
        pipe.generate("a cat <lora:inc:1>", **SETTINGS)
    foreign = tmp_path / "models" / "loras" / "xl.safetensors"
    save_file({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 32)}, foreign)
    with pytest.raises(InvalidArgumentError, match="sdxl"):
        pipe.generate("a cat <lora:xl>", **SETTINGS)
    with pytest.raises(InvalidArgumentError, match="no LoRA 'ink' is applied"):
        pipe.loras.remove("ink")


def test_embeddings_from_the_library_folder_trigger_by_name_and_are_recorded(library, tmp_path):
    pipe = tiny_sd1(library)
    width = pipe.text_encoders[0].config.hidden_size
    folder = tmp_path / "models" / "embeddings"
    folder.mkdir()
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(5))
    write_embedding_file(folder / "glint.safetensors", EmbeddingVectors.of(vectors))
    plain = pipe.generate("a cat", **SETTINGS)[0]
    triggered = pipe.generate("a cat, glint", **SETTINGS)[0]
    assert plain.tobytes() != triggered.tobytes()
    record = triggered.info["lienzo"]
    assert list(record["embeddings"]) == ["glint"] and plain.info["lienzo"]["embeddings"] == {}
    assert parse_parameters(format_parameters(record))["embeddings"] == record["embeddings"]
    explicit = tiny_sd1(library)
    explicit.embeddings = load_embeddings(folder / "glint.safetensors")
    assert explicit.generate("a cat, glint", **SETTINGS)[0].tobytes() == triggered.tobytes()


def test_the_command_line_finds_loras_and_models_by_name(library, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    checkpoints = tmp_path / "models" / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "tiny").symlink_to(tiny_pipeline_folder("sd1"), target_is_directory=True)
    args = ["--model", "tiny", "--size", "32x32", "--steps", "2", "--seed", "1", "-q"]
    assert main(["generate", "a cat <lora:ink:0.5>", *args, "-o", "out.png"]) == 0
    assert 'Lora hashes: "ink: ' in read_parameters(tmp_path / "out.png")
    assert main(["generate", "--from-png", "out.png", "--model", "tiny", "-q", "-o", "again.png"]) == 0
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "out.png").read_bytes()
    embeddings = tmp_path / "my-embeddings"
    embeddings.mkdir()
    width = tiny_sd1(library).text_encoders[0].config.hidden_size
    write_embedding_file(embeddings / "glint.safetensors", EmbeddingVectors.of(torch.ones(1, width)))
    with_embedding = [*args, "--embeddings-dir", str(embeddings), "-o", "glint.png"]
    assert main(["generate", "a cat, glint", *with_embedding]) == 0
    assert 'TI hashes: "glint: ' in read_parameters(tmp_path / "glint.png")
    capsys.readouterr()
    assert main(["generate", "a cat <lora:missing>", *args, "-o", "none.png"]) == 1
    assert "no LoRA named 'missing'" in capsys.readouterr().err
    assert not (tmp_path / "none.png").exists()
    other = tmp_path / "elsewhere"
    (tmp_path / "models" / "loras").rename(other)
    assert main(["generate", "a cat <lora:ink>", *args, "--lora-dir", str(other), "-o", "moved.png"]) == 0


def test_embeddings_bundled_in_a_lora_file_work_while_it_is_applied(library, tmp_path):
    pipe = tiny_sd1(library)
    width = pipe.text_encoders[0].config.hidden_size
    vectors = torch.randn(1, width, generator=torch.Generator().manual_seed(6))
    reference = reference_pipeline("sd1")
    path = tmp_path / "models" / "loras" / "bundle.safetensors"
    kohya_file(reference, path, torch.Generator().manual_seed(3))
    tensors = {**load_file(path), "bundle_emb.sparkle.string_to_param.*": vectors}
    save_file(tensors, path)
    plain = pipe.generate("a cat <lora:bundle:0>", **SETTINGS)[0]
    triggered = pipe.generate("a cat, sparkle <lora:bundle:0>", **SETTINGS)[0]
    assert plain.tobytes() != triggered.tobytes()
    assert list(triggered.info["lienzo"]["embeddings"]) == ["sparkle"]
    assert pipe.generate("a cat, sparkle", **SETTINGS)[0].info["lienzo"]["embeddings"] == {}


def test_a_lora_tagged_twice_applies_twice(library):
    pipe = tiny_sd1(library)
    twice = pipe.generate("a cat <lora:ink:0.25> <lora:ink:0.25>", **SETTINGS)[0]
    once = pipe.generate("a cat <lora:ink:0.5>", **SETTINGS)[0]
    difference = np.abs(np.asarray(twice, dtype=np.int16) - np.asarray(once, dtype=np.int16)).max()
    assert difference <= 1 and pipe.loras.strengths == {}


def test_another_vae_by_name_decodes_and_is_recorded(library, tmp_path, monkeypatch):
    pipe = tiny_sd1(library)
    folder = tmp_path / "models" / "vae"
    folder.mkdir()
    weights = {key: (value * 0.5).contiguous() for key, value in pipe.vae.state_dict().items()}
    save_file(weights, folder / "half.safetensors")
    plain = pipe.generate("a cat", **SETTINGS)[0]
    other = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    pipe.use_vae("half")
    halved = pipe.generate("a cat", **SETTINGS)[0]
    assert halved.tobytes() != plain.tobytes() and halved.info["lienzo"]["vae"] == "half"
    assert "VAE: half" in format_parameters(halved.info["lienzo"])
    assert other.generate("a cat", **SETTINGS)[0].tobytes() == plain.tobytes()
    save_file({"encoder.conv_in.weight": torch.zeros(1)}, folder / "broken.safetensors")
    with pytest.raises(InvalidArgumentError, match="does not fit this sd1 model"):
        pipe.use_vae("broken")
    monkeypatch.chdir(tmp_path)
    args = ["--model", str(tiny_pipeline_folder("sd1")), "--size", "32x32", "--steps", "2", "-q"]
    assert main(["generate", "a cat", *args, "--vae", "half", "--seed", "3", "-o", "v.png"]) == 0
    assert "VAE: half" in read_parameters(tmp_path / "v.png")


def test_lycoris_files_patch_the_weights_as_lycoris_computes(library, tmp_path):
    """A LoHa and a LoKr module in one kohya-named file, applied through a Pipeline, against the
    `lycoris-lora` functional oracle: W' = W + m * diff_weight."""
    from lycoris.functional import loha, lokr

    pipe = tiny_sd1(library)
    layers = targets(reference_pipeline("sd1").unet)
    q_name, ff_name = (next(n for n in layers if n.endswith(end)) for end in ("attn1.to_q", "ff.net.2"))
    generator = torch.Generator().manual_seed(9)
    q_out, q_in = layers[q_name].weight.shape
    ff_out, ff_in = layers[ff_name].weight.shape
    halves = [torch.randn(shape, generator=generator) for shape in [(q_out, 2), (2, q_in)] * 2]
    kron = [torch.randn(2, 2, generator=generator), torch.randn(ff_out // 2, ff_in // 2, generator=generator)]
    q_key, ff_key = (f"lora_unet_{name.replace('.', '_')}" for name in (q_name, ff_name))
    tensors = {
        f"{q_key}.hada_w1_a": halves[0],
        f"{q_key}.hada_w1_b": halves[1],
        f"{q_key}.hada_w2_a": halves[2],
        f"{q_key}.hada_w2_b": halves[3],
        f"{q_key}.alpha": torch.tensor(1.0),
        f"{ff_key}.lokr_w1": kron[0],
        f"{ff_key}.lokr_w2": kron[1],
    }
    path = tmp_path / "models" / "loras" / "lyco.safetensors"
    save_file(tensors, path)
    expected = {
        q_key: loha.diff_weight(halves[1], halves[0], halves[3], halves[2], None, None, gamma=0.5),
        ff_key: lokr.diff_weight(kron[0], None, None, kron[1], None, None, None, gamma=1.0),
    }
    pipe.loras.add("lyco", 0.6)
    adapter = read_adapter_file(path)
    text_shapes = [parameter_shapes(encoder) for encoder in pipe.text_encoders]
    resolution = resolve_targets(adapter, pipe.spec, parameter_shapes(pipe.unet), text_shapes)
    assert {target.key for target in resolution.targets} == set(expected)
    for target in resolution.targets:
        (name,) = target.params["weight"]
        original = pipe.unet_patcher.originals[name]
        wanted = original.float() + 0.6 * expected[target.key].reshape(original.shape)
        torch.testing.assert_close(pipe.unet.get_parameter(name), wanted, rtol=1e-5, atol=1e-5)
