"""Diffusers folders: detection, configs and weights read in lienzo's naming, written back loadable."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lienzo.errors import (
    CorruptCheckpointError,
    InvalidArgumentError,
    ModelNotFoundError,
    UnknownArchitectureError,
)
from lienzo.io import read_model, read_state_dict, write_model
from lienzo.io.keymaps.clip import clip_hf_canonical
from lienzo.io.keymaps.unet import unet_diffusers_to_ldm
from lienzo.io.keymaps.vae import vae_diffusers_to_ldm
from lienzo.models.clip import CLIPTextModel
from lienzo.models.unet import UNetModel
from lienzo.models.vae import AutoencoderKL
from tiny_models import FAMILIES, tiny_pipeline_folder, tiny_spec

PIPELINE_CLASS_NAMES = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sd2-v": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
    "sd1-inpaint": "StableDiffusionInpaintPipeline",
    "sd2-depth": "StableDiffusionDepth2ImgPipeline",
}
TEXT_COMPONENTS = {"sdxl": ["text_encoder", "text_encoder_2"], "sdxl-refiner": ["text_encoder_2"]}


def diffusers_components(folder, family):
    """The oracle: each component loaded by diffusers/transformers themselves."""
    import diffusers
    import transformers

    components = {
        "unet": diffusers.UNet2DConditionModel.from_pretrained(folder / "unet"),
        "vae": diffusers.AutoencoderKL.from_pretrained(folder / "vae"),
    }
    for name in TEXT_COMPONENTS.get(family, ["text_encoder"]):
        architecture = json.loads((folder / name / "config.json").read_text())["architectures"][0]
        components[name] = getattr(transformers, architecture).from_pretrained(folder / name)
    return components


@pytest.mark.parametrize("family", FAMILIES)
def test_read_model_detects_family_configs_and_weights(family):
    folder = tiny_pipeline_folder(family)
    files = read_model(folder)
    expected = tiny_spec(family)
    assert files.family == family
    assert files.source_format == "diffusers"
    assert files.spec.unet == expected.unet
    assert files.spec.vae == expected.vae
    assert [tower.config for tower in files.spec.text_encoders] == [t.config for t in expected.text_encoders]
    assert files.spec.prediction == expected.prediction
    assert all(tokenizer is not None and tokenizer.is_dir() for tokenizer in files.tokenizer_folders)
    oracle = diffusers_components(folder, family)
    unet = unet_diffusers_to_ldm(oracle["unet"].state_dict())
    vae = vae_diffusers_to_ldm(oracle["vae"].state_dict())
    text_names = TEXT_COMPONENTS.get(family, ["text_encoder"])
    texts = [clip_hf_canonical(oracle[name].state_dict()) for name in text_names]
    for ours, theirs in [(files.unet, unet), (files.vae, vae), *zip(files.text_encoders, texts, strict=True)]:
        assert set(ours) == set(theirs)
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_read_weights_load_strictly_into_lienzo_modules(family):
    files = read_model(tiny_pipeline_folder(family))
    UNetModel(files.spec.unet).load_state_dict(files.unet, strict=True)
    AutoencoderKL(files.spec.vae).load_state_dict(files.vae, strict=True)
    for tower, weights in zip(files.spec.text_encoders, files.text_encoders, strict=True):
        CLIPTextModel(tower.config).load_state_dict(weights, strict=True)


def test_family_override_changes_prediction():
    files = read_model(tiny_pipeline_folder("sd2"), family="sd2-v")
    assert files.family == "sd2-v" and files.spec.prediction == "v"


@pytest.mark.parametrize("family", ["sd2-v", "sdxl-refiner", "sd2-depth"])
def test_written_folder_loads_in_diffusers_with_equal_weights(tmp_path, family):
    import diffusers

    source = tiny_pipeline_folder(family)
    target = write_model(read_model(source), tmp_path / "copy")
    index = json.loads((target / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINE_CLASS_NAMES[family]
    scheduler = json.loads((target / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == ("v_prediction" if family == "sd2-v" else "epsilon")
    if family != "sd2-depth":
        pipeline = diffusers.DiffusionPipeline.from_pretrained(target)
        assert type(pipeline).__name__ == PIPELINE_CLASS_NAMES[family]
    expected, written = diffusers_components(source, family), diffusers_components(target, family)
    for name, module in expected.items():
        theirs = written[name].state_dict()
        assert all(torch.equal(value, theirs[key]) for key, value in module.state_dict().items()), name
    assert read_model(target).family == family


def test_fp16_variant_weights_are_read(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_folder("sd1"), folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_name("diffusion_pytorch_model.fp16.safetensors"))
    assert torch.equal(
        read_model(folder).unet["out.2.weight"], read_model(tiny_pipeline_folder("sd1")).unet["out.2.weight"]
    )


def test_bin_weights_are_read_through_the_weights_only_loader(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_folder("sd1"), folder)
    weights = folder / "text_encoder" / "model.safetensors"
    torch.save(read_state_dict(weights), weights.with_suffix(".bin"))
    weights.unlink()
    assert torch.equal(
        read_model(folder).text_encoders[0]["text_model.final_layer_norm.weight"],
        read_model(tiny_pipeline_folder("sd1")).text_encoders[0]["text_model.final_layer_norm.weight"],
    )


@pytest.mark.parametrize("family", ["sdxl-v", "sd3", "sd1-upscale"])
def test_unknown_family_override_is_an_invalid_argument(family):
    with pytest.raises(InvalidArgumentError, match="sd1"):
        read_model(tiny_pipeline_folder("sd1"), family=family)


def test_write_refuses_existing_destination_and_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import lienzo.io.diffusers_folder as diffusers_folder

    files = read_model(tiny_pipeline_folder("sd1"))
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(InvalidArgumentError, match="already exists"):
        write_model(files, existing)

    def fail_on_vae(path, state_dict, metadata=None):
        if path.parent.name == "vae":
            raise OSError("disk full")
        original(path, state_dict, metadata)

    original = diffusers_folder.write_safetensors
    monkeypatch.setattr(diffusers_folder, "write_safetensors", fail_on_vae)
    with pytest.raises(OSError, match="disk full"):
        write_model(files, tmp_path / "out")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["existing"]


def test_non_model_directory_says_what_a_model_folder_holds(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        read_model(tmp_path)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        read_model(tmp_path / "absent")


def test_unknown_pipeline_and_unet_are_unknown_architectures(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_folder("sd1"), folder)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(UnknownArchitectureError, match="FluxPipeline"):
        read_model(folder)
    index_path.write_text(json.dumps(index))
    unet_config_path = folder / "unet" / "config.json"
    unet_config = json.loads(unet_config_path.read_text())
    unet_config_path.write_text(json.dumps({**unet_config, "in_channels": 7}))
    with pytest.raises(UnknownArchitectureError, match="7 input channels"):
        read_model(folder)


def test_sdxl_size_embedding_width_is_read_and_checked_against_the_vector_input(tmp_path):
    assert read_model(tiny_pipeline_folder("sdxl", time_embed_dim=8)).spec.unet.addition_time_embed_dim == 8
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_folder("sdxl"), folder)
    config_path = folder / "unet" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "addition_time_embed_dim": 8}))
    with pytest.raises(CorruptCheckpointError, match="addition_time_embed_dim 8"):
        read_model(folder)
