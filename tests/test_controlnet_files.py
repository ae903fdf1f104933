"""ControlNet files and pieces: key maps both ways, every stored layout (diffusers folder, ldm with and
without `control_model.`, diffusers-named file, difference file), families, hint block depth from the
weights, control image fitting, residual scales and the step window."""

from __future__ import annotations

from dataclasses import replace

import diffusers
import pytest
import torch
from PIL import Image

import lienzo
from controlnet_models import controlnet_file, controlnet_folder, ldm_weights, tiny_controlnet
from lienzo.adapters.patcher import WeightPatch
from lienzo.errors import InvalidArgumentError, UnknownArchitectureError
from lienzo.io.controlnet_files import (
    DIFFERENCE_KEY,
    check_controlnet_fits,
    family_of_weights,
    read_controlnet,
)
from lienzo.io.formats import write_safetensors
from lienzo.io.keymaps.controlnet import (
    controlnet_config_from_diffusers,
    controlnet_config_to_diffusers,
    controlnet_diffusers_to_ldm,
    controlnet_ldm_to_diffusers,
)
from lienzo.io.keymaps.unet import unet_config_to_diffusers
from lienzo.models.conditioning import Conditioning
from lienzo.models.controlnet import ControlNet, controlnet_config_for
from lienzo.pipelines.control_apply import residual_scales
from lienzo.pipelines.control_units import ControlUnit, acts_at
from lienzo.pipelines.controlnets import crop_control_images, fit_control_image
from lienzo.pipelines.metadata import format_parameters, parse_parameters
from lienzo.pipelines.options import resolve_options
from tiny_models import TINY_UNET, randomize_parameters, tiny_pipeline_folder, tiny_spec

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pipe(family: str = "sd1"):
    return lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_key_maps_round_trip_and_configs_agree(family):
    reference = tiny_controlnet(family, 1)
    diffusers_sd = reference.state_dict()
    ldm = controlnet_diffusers_to_ldm(diffusers_sd)
    config = controlnet_config_from_diffusers(dict(reference.config))
    model = ControlNet(config)
    assert set(ldm) == set(model.state_dict())
    back = controlnet_ldm_to_diffusers(ldm, config)
    assert set(back) == set(diffusers_sd)
    assert all(back[key] is diffusers_sd[key] for key in back)
    rebuilt = controlnet_config_from_diffusers(controlnet_config_to_diffusers(config))
    assert rebuilt == config


@pytest.mark.parametrize("layout", ["folder", "prefixed", "bare", "diffusers-file"])
def test_every_layout_reads_the_same_weights(tmp_path, layout):
    expected = ldm_weights("sd1", 1)
    if layout == "folder":
        path = controlnet_folder("sd1", 1)
    elif layout == "prefixed":
        path = controlnet_file("sd1", 1)
    elif layout == "bare":
        path = controlnet_file("sd1", 1, prefix="")
    else:
        path = tmp_path / "diffusers_named.safetensors"
        write_safetensors(path, tiny_controlnet("sd1", 1).state_dict())
    found = read_controlnet(path, base=tiny_pipe().spec)
    assert set(found.state_dict) == set(expected)
    assert all(torch.equal(found.state_dict[key], expected[key]) for key in expected)
    assert found.config.hint_block_channels == (16, 32)


def test_difference_file_adds_the_base_unet(tmp_path):
    pipe = tiny_pipe()
    base = pipe.unet.state_dict()
    whole = ldm_weights("sd1", 1)
    stored = {key: value - base[key] if key in base else value for key, value in whole.items()}
    path = tmp_path / "diff.safetensors"
    write_safetensors(
        path, {**{f"control_model.{k}": v for k, v in stored.items()}, DIFFERENCE_KEY: torch.zeros(1)}
    )
    name = "input_blocks.1.0.in_layers.2.weight"
    pipe.unet_patcher.add("lora", [WeightPatch((name,), lambda weight: torch.full_like(weight, 0.5))])
    assert not torch.equal(pipe.unet.state_dict()[name], base[name])
    loaded = pipe.load_controlnet(path)
    assert loaded.layout == "difference"
    state = loaded.model.state_dict()
    shared = [key for key in whole if key in base]
    assert len(shared) > 100
    assert max((state[key] - whole[key]).abs().max().item() for key in whole) < 1e-6
    with pytest.raises(InvalidArgumentError, match="difference ControlNet"):
        read_controlnet(path, base=pipe.spec)


def test_a_controlnet_of_another_family_is_refused():
    sdxl = tiny_pipe("sdxl")
    with pytest.raises(InvalidArgumentError, match="use a ControlNet made for sdxl"):
        sdxl.load_controlnet(controlnet_file("sd1", 1))
    loaded = tiny_pipe().load_controlnet(controlnet_file("sd1", 1))
    with pytest.raises(InvalidArgumentError, match="use a ControlNet made for sdxl"):
        sdxl.generate(
            "a cat",
            steps=1,
            width=32,
            height=32,
            controlnets=[ControlUnit(loaded, Image.new("RGB", (32, 32)))],
        )


def test_a_controlnet_for_another_latent_width_is_refused():
    spec = tiny_pipe().spec
    config = read_controlnet(controlnet_file("sd1", 1), base=spec).config
    check_controlnet_fits(config, spec)
    wider = replace(spec, vae=replace(spec.vae, embed_dim=16, z_channels=16))
    with pytest.raises(InvalidArgumentError, match="reads 4-channel latents but .* 16 channels"):
        check_controlnet_fits(config, wider)


def test_published_families_come_from_the_shapes_and_other_files_are_refused(tmp_path):
    assert (
        family_of_weights({"input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.empty(4, 768)})
        == "sd1"
    )
    assert family_of_weights({"x.attn2.to_k.weight": torch.empty(4, 1024)}) == "sd2"
    sdxl = {"x.attn2.to_k.weight": torch.empty(4, 2048), "label_emb.0.0.weight": torch.empty(4, 2816)}
    assert family_of_weights(sdxl) == "sdxl"
    assert family_of_weights({"x.attn2.to_k.weight": torch.empty(4, 32)}) is None
    adapter = tmp_path / "ip_adapter.safetensors"
    write_safetensors(adapter, {"image_proj.proj.weight": torch.zeros(1)})
    with pytest.raises(UnknownArchitectureError, match="not a ControlNet"):
        read_controlnet(adapter)
    with pytest.raises(UnknownArchitectureError, match="match no published family"):
        lienzo.load_controlnet(controlnet_file("sd1", 1), device="cpu")


def test_hint_block_depth_follows_a_vae_factor_of_4():
    config = controlnet_config_for(TINY_UNET, vae_factor=4)
    assert config.hint_block_channels == (16, 32, 96) and config.downscale_factor == 4
    unet = diffusers.UNet2DConditionModel(**unet_config_to_diffusers(TINY_UNET))
    reference = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96))
    randomize_parameters(reference, 3)
    ours = ControlNet(controlnet_config_from_diffusers(dict(reference.config)))
    assert ours.controlnet_config == config
    ours.load_state_dict(controlnet_diffusers_to_ldm(reference.state_dict()), strict=True)
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([900.0, 40.0])
    context, hint = torch.randn(2, 7, 32, generator=generator), torch.rand(2, 3, 32, 32, generator=generator)
    with torch.no_grad():
        skips, middle = reference(x, t, context, hint, return_dict=False)
        residuals = ours(x, hint, t, Conditioning(context))
    error = max((a - b).abs().max().item() for a, b in zip(skips, residuals.skips, strict=True))
    assert max(error, (middle - residuals.middle).abs().max().item()) < 1e-4
    with pytest.raises(ValueError, match="shrinks images 4x"):
        ours(x, torch.rand(1, 3, 16, 16), t, Conditioning(context))
    spec = tiny_spec("sd1")
    assert spec.vae.downscale_factor == 2


def test_control_images_fit_each_resize_mode():
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (16, 0, 48, 32))
    stretched = fit_control_image(image, 32, 32, "just_resize")
    cropped = fit_control_image(image, 32, 32, "crop_and_resize")
    filled = fit_control_image(image, 32, 32, "resize_and_fill")
    assert stretched.size == cropped.size == filled.size == (32, 32)
    assert cropped.getpixel((0, 16)) == (0, 0, 255) and cropped.getpixel((31, 16)) == (0, 0, 255)
    assert stretched.getpixel((0, 16)) == (255, 0, 0)
    assert filled.getpixel((16, 0)) == (255, 0, 0) and filled.getpixel((16, 31)) == (255, 0, 0)
    assert filled.getpixel((16, 16)) == (0, 0, 255)


def test_residual_scales_and_step_window():
    assert residual_scales("balanced", 0.5, 13) == [0.5] * 13
    prompt = residual_scales("prompt", 2.0, 13)
    assert prompt[-1] == 2.0 and abs(prompt[0] - 2.0 * 0.825**12) < 1e-12
    control = residual_scales("control", 1.0, 13)
    assert abs(control[0] - 0.1) < 1e-6 and abs(control[-1] - 1.0) < 1e-6
    unit = ControlUnit("x", "y", start=0.25, end=0.75)
    assert [acts_at(unit, step, 8) for step in range(8)] == [
        False,
        False,
        True,
        True,
        True,
        True,
        False,
        False,
    ]


def test_python_api_units_with_a_loaded_controlnet_record_name_and_hash():
    pipe = tiny_pipe()
    loaded = lienzo.load_controlnet(controlnet_file("sd1", 1), base=pipe)
    unit = ControlUnit(loaded, Image.new("RGB", (32, 32), (255, 255, 255)), strength=0.5, mode="control")
    (image,) = pipe.generate(
        "a cat", steps=2, width=32, height=32, seed=1, controlnets=[unit], progress=False
    )
    (record,) = image.info["lienzo"]["controlnets"]
    assert record["model"] == controlnet_file("sd1", 1).stem and record["model_hash"] == loaded.short_hash
    assert record["control_mode"] == "ControlNet is more important" and record["weight"] == 0.5


def test_only_masked_inpainting_crops_control_images_of_the_source_size():
    source_sized = Image.new("RGB", (64, 48))
    source_sized.paste((255, 255, 255), (16, 8, 48, 40))
    other = Image.new("RGB", (32, 32))
    units = [ControlUnit("a", source_sized), ControlUnit("b", other)]
    options = replace(resolve_options(tiny_spec("sd1"), prompt="x"), controlnets=tuple(units))
    cropped = crop_control_images(options, (16, 8, 48, 40), (64, 48)).controlnets
    assert cropped[0].image.size == (32, 32) and cropped[0].image.getextrema() == ((255, 255),) * 3
    assert cropped[1].image is other


def test_control_lora_adds_up_down_to_the_base_encoder(tmp_path):
    pipe = tiny_pipe()
    base = pipe.unet.state_dict()
    own = ldm_weights("sd1", 1)
    generator = torch.Generator().manual_seed(4)
    lowrank = [key for key in own if key in base and own[key].ndim >= 2][::3]
    stored, expected = {"lora_controlnet": torch.zeros(1)}, {}
    for key in own:
        if key in lowrank:
            weight = base[key]
            up = torch.randn(weight.shape[0], 2, generator=generator)
            down = torch.randn(2, weight[0].numel(), generator=generator)
            stored[key.removesuffix(".weight") + ".up"] = up
            stored[key.removesuffix(".weight") + ".down"] = down.reshape(2, *weight.shape[1:])
            expected[key] = weight + (up @ down).reshape(weight.shape)
        elif key not in base or key.endswith(".bias"):
            stored[key] = own[key]
            expected[key] = own[key]
        else:
            expected[key] = base[key]
    path = tmp_path / "control-lora.safetensors"
    write_safetensors(path, stored)
    loaded = pipe.load_controlnet(path)
    assert loaded.layout == "control-lora" and len(lowrank) >= 20
    state = loaded.model.state_dict()
    assert set(state) == set(expected)
    assert max((state[key] - expected[key]).abs().max().item() for key in expected) < 1e-5
    with pytest.raises(InvalidArgumentError, match="Control-LoRA"):
        read_controlnet(path, base=pipe.spec)


def test_a1111_controlnet_fields_parse_with_their_extra_keys():
    text = (
        "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: sd15, "
        'ControlNet 1: "Module: depth_midas, Model: control_v11f1p_sd15_depth [cfd03158], Weight: 0.5, '
        "Resize Mode: Just Resize, Low Vram: False, Processor Res: 384, Guidance Start: 0.1, "
        "Guidance End: 0.9, "
        'Pixel Perfect: True, Control Mode: ControlNet is more important", '
        'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, '
        "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100, Threshold B: 200, "
        "Guidance Start: 0, "
        'Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced, Hr Option: Both", Version: v1.10.1'
    )
    first, second = parse_parameters(text)["controlnets"]
    assert first == {
        "module": "canny",
        "model": "control_v11p_sd15_canny",
        "model_hash": "d14c016b",
        "weight": 1.0,
        "resize_mode": "Crop and Resize",
        "guidance_start": 0.0,
        "guidance_end": 1.0,
        "control_mode": "Balanced",
        "threshold_a": 100.0,
        "threshold_b": 200.0,
    }
    assert second["model_hash"] == "cfd03158" and second["weight"] == 0.5 and second["threshold_a"] is None
    assert (second["guidance_start"], second["guidance_end"]) == (0.1, 0.9)
    assert second["control_mode"] == "ControlNet is more important" and second["resize_mode"] == "Just Resize"
    written = format_parameters({**parse_parameters(text), "controlnets": [first]})
    assert parse_parameters(written)["controlnets"] == [first]
