"""Single-file checkpoints: written files load in diffusers' own converter; detection needs no metadata."""

from __future__ import annotations

import pytest
import torch

from lienzo.errors import CorruptCheckpointError, UnknownArchitectureError
from lienzo.io import read_model, read_safetensors_metadata, write_model, write_safetensors
from lienzo.io.layouts import OPENCLIP_SD2
from lienzo.io.single_file import join_single_file, layers_used
from lienzo.models.clip import CLIPTextConfig
from tiny_models import FAMILIES, tiny_pipeline_folder, tiny_spec

SINGLE_FILE_FAMILIES = ("sd1", "sd2-v", "sdxl", "sdxl-refiner", "sd1-inpaint")
DIFFUSERS_PIPELINES = {
    "sd1": "StableDiffusionPipeline",
    "sd2-v": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
    "sd1-inpaint": "StableDiffusionInpaintPipeline",
}
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def max_abs_difference(expected: torch.nn.Module, actual: torch.nn.Module) -> float:
    """Largest weight difference between two modules that must have identical key sets."""
    theirs, ours = expected.state_dict(), actual.state_dict()
    assert set(theirs) == set(ours)
    return max(float((theirs[key].float() - ours[key].float()).abs().max()) for key in theirs)


@pytest.mark.parametrize("family", SINGLE_FILE_FAMILIES)
def test_single_file_loads_in_diffusers_from_single_file_with_every_weight_equal(tmp_path, family):
    import diffusers

    folder = tiny_pipeline_folder(family)
    single = write_model(read_model(folder), tmp_path / "model.safetensors")
    pipeline_class = getattr(diffusers, DIFFUSERS_PIPELINES[family])
    expected = diffusers.DiffusionPipeline.from_pretrained(folder)
    converted = pipeline_class.from_single_file(str(single), config=str(folder), local_files_only=True)
    compared = 0
    for name in COMPONENTS:
        if getattr(expected, name, None) is not None:
            assert max_abs_difference(getattr(expected, name), getattr(converted, name)) == 0.0, name
            compared += 1
    assert compared == 2 + len(tiny_spec(family).text_encoders)


@pytest.mark.parametrize("family", ["sd2-v", "sdxl"])
def test_single_file_to_folder_round_trip_through_diffusers(tmp_path, family):
    import diffusers

    folder = tiny_pipeline_folder(family)
    single = write_model(read_model(folder), tmp_path / "model.safetensors")
    files = read_model(single)
    assert files.family == family and files.source_format == "single-file"
    assert files.spec == read_model(folder).spec
    rebuilt = write_model(files, tmp_path / "rebuilt")
    expected = diffusers.DiffusionPipeline.from_pretrained(folder)
    actual = diffusers.DiffusionPipeline.from_pretrained(rebuilt)
    assert type(actual) is type(expected)
    assert actual.scheduler.config.prediction_type == expected.scheduler.config.prediction_type
    for name in COMPONENTS:
        if getattr(expected, name, None) is not None:
            assert max_abs_difference(getattr(expected, name), getattr(actual, name)) == 0.0, name


def test_dtype_conversion_casts_floats_and_keeps_values(tmp_path):
    original = read_model(tiny_pipeline_folder("sd1"))
    half = read_model(write_model(original, tmp_path / "half.safetensors", dtype=torch.float16))
    for ours, theirs in zip(half.components().values(), original.components().values(), strict=True):
        assert {tensor.dtype for tensor in ours.values()} == {torch.float16}
        assert all(torch.equal(ours[key], theirs[key].half()) for key in theirs)
    bf16_folder = write_model(original, tmp_path / "bf16", dtype=torch.bfloat16)
    assert {t.dtype for t in read_model(bf16_folder).unet.values()} == {torch.bfloat16}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_detected_from_keys_and_shapes_without_metadata(tmp_path, family):
    files = read_model(tiny_pipeline_folder(family))
    path = tmp_path / "bare.safetensors"
    write_safetensors(path, join_single_file(files))
    assert read_safetensors_metadata(path) == {}
    bare = read_model(path)
    assert bare.family == family
    assert bare.spec.vae.scaling_factor == files.spec.vae.scaling_factor
    assert [t.config.hidden_act for t in bare.spec.text_encoders] == [
        t.config.hidden_act for t in files.spec.text_encoders
    ]
    assert bare.unet.keys() == files.unet.keys() and bare.vae.keys() == files.vae.keys()
    for tower, ours, theirs in zip(
        files.spec.text_encoders, bare.text_encoders, files.text_encoders, strict=True
    ):
        if family.startswith("sd2"):
            last = f"text_model.encoder.layers.{tower.config.num_hidden_layers - 1}."
            dropped = {key for key in theirs if key.startswith(last)}
            assert dropped and ours.keys() == theirs.keys() - dropped
        else:
            assert ours.keys() == theirs.keys()


def test_sd1_without_metadata_infers_the_exact_config_from_a_ckpt(tmp_path):
    files = read_model(tiny_pipeline_folder("sd1"))
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": join_single_file(files), "global_step": 10}, path)
    bare = read_model(path)
    assert bare.spec.unet == files.spec.unet
    assert bare.spec.vae == files.spec.vae
    assert torch.equal(
        bare.text_encoders[0]["text_model.final_layer_norm.weight"],
        files.text_encoders[0]["text_model.final_layer_norm.weight"],
    )


def test_sd2_file_with_an_extra_openclip_layer_drops_it(tmp_path):
    files = read_model(tiny_pipeline_folder("sd2"))
    state_dict = join_single_file(files)
    last = files.spec.text_encoders[0].config.num_hidden_layers - 1
    prefix = "cond_stage_model.model.transformer.resblocks."
    for key in [key for key in state_dict if key.startswith(f"{prefix}{last}.")]:
        extra = key.replace(f"{prefix}{last}.", f"{prefix}{last + 1}.")
        state_dict[extra] = torch.randn_like(state_dict[key])
    state_dict["cond_stage_model.model.text_projection"] = torch.randn(32, 32)
    path = tmp_path / "sd2.safetensors"
    write_safetensors(path, state_dict)
    bare = read_model(path)
    assert bare.spec.text_encoders[0].config.num_hidden_layers == last + 1
    assert set(bare.text_encoders[0]) == set(files.text_encoders[0])


@pytest.mark.parametrize(("stored", "expected"), [(3, 2), (2, 2)])
def test_reference_width_towers_run_at_most_the_reference_layer_count(stored, expected):
    reference = CLIPTextConfig(hidden_size=8, num_hidden_layers=2)
    tower = {"text_model.embeddings.token_embedding.weight": torch.zeros(10, 8)}
    tower.update(
        {f"text_model.encoder.layers.{index}.mlp.fc1.weight": torch.zeros(1) for index in range(stored)}
    )
    assert layers_used(tower, OPENCLIP_SD2, reference) == expected


def test_older_sd1_clip_keys_without_text_model_are_accepted(tmp_path):
    files = read_model(tiny_pipeline_folder("sd1"))
    state_dict = {
        key.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): value
        for key, value in join_single_file(files).items()
    }
    path = tmp_path / "old.safetensors"
    write_safetensors(path, state_dict)
    assert read_model(path).text_encoders[0].keys() == files.text_encoders[0].keys()


def test_v_prediction_key_and_family_override(tmp_path):
    files = read_model(tiny_pipeline_folder("sd2"))
    state_dict = join_single_file(files)
    path = tmp_path / "plain.safetensors"
    write_safetensors(path, state_dict)
    assert read_model(path).family == "sd2"
    assert read_model(path, family="sd2-v").spec.prediction == "v"
    write_safetensors(path, {**state_dict, "v_pred": torch.tensor([])})
    assert read_model(path).family == "sd2-v"


def test_unknown_architectures_list_what_was_found(tmp_path):
    lora = tmp_path / "lora.safetensors"
    write_safetensors(lora, {"lora_unet_down_blocks_0.alpha": torch.tensor(4.0), "lora_te.w": torch.ones(2)})
    with pytest.raises(UnknownArchitectureError, match="lora_unet_down_blocks_0") as caught:
        read_model(lora)
    assert "sdxl" in str(caught.value)
    unet_only = tmp_path / "unet.safetensors"
    write_safetensors(unet_only, {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)})
    with pytest.raises(UnknownArchitectureError):
        read_model(unet_only)


def test_checkpoint_missing_a_component_is_corrupt(tmp_path):
    files = read_model(tiny_pipeline_folder("sd1"))
    state_dict = {k: v for k, v in join_single_file(files).items() if not k.startswith("first_stage_model.")}
    path = tmp_path / "novae.safetensors"
    write_safetensors(path, state_dict)
    with pytest.raises(CorruptCheckpointError, match="lacks part"):
        read_model(path)
