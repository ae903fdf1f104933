"""T2I-Adapter (Mou et al. 2023) on tiny random models: features against diffusers' T2IAdapter, the UNet
against UNet2DConditionModel's down_intrablock_additional_residuals; every file layout reads the same
weights; strength 0, modes, mixed units, wrong families (generation parity: test_t2i_adapter_parity.py)."""

from __future__ import annotations

import shutil

import diffusers
import pytest
import torch

import lienzo
from controlnet_models import control_image, controlnet_file
from lienzo.errors import InvalidArgumentError, UnknownArchitectureError
from lienzo.io.controlnet_files import read_controlnet
from lienzo.io.formats import write_safetensors
from lienzo.io.keymaps.t2i_adapter import (
    t2i_adapter_config_from_diffusers,
    t2i_adapter_config_to_diffusers,
    t2i_adapter_diffusers_to_original,
    t2i_adapter_original_to_diffusers,
)
from lienzo.io.keymaps.unet import unet_config_to_diffusers, unet_diffusers_to_ldm
from lienzo.io.library import ModelLibrary
from lienzo.models.conditioning import Conditioning, ControlResiduals
from lienzo.models.t2i_adapter import T2IAdapter
from lienzo.models.unet import UNetModel
from lienzo.pipelines.control_apply import adapter_scales
from lienzo.pipelines.generation import generate_latents
from lienzo.pipelines.options import resolve_options
from t2i_adapter_models import (
    ADAPTERS,
    SINGLE_FILE_ADAPTERS,
    UNETS,
    adapter_folder,
    lienzo_adapter,
    reference_adapter,
)
from tiny_models import randomize_parameters, tiny_pipeline_folder

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = {"width": 32, "height": 32, "steps": 3, "cfg": 5.0, "sampler": "euler", "seed": 5}


@pytest.mark.parametrize("size", [(32, 48), (40, 24)], ids=["even", "odd-pooled"])
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_features_match_diffusers(name, size):
    """Every output of each variant, including average pools over odd sizes (ceil mode)."""
    reference = reference_adapter(name)
    model = lienzo_adapter(reference)
    image = torch.rand(2, 3, *size)
    assert {"num_res_blocks": 2, **ADAPTERS[name]}.items() <= dict(reference.config).items()
    with torch.inference_mode():
        expected, actual = reference(image), model(image)
    assert len(actual) == len(expected) == {"full": 2, "xl": 4, "light": 3}[name]
    for ours, theirs in zip(actual, expected, strict=True):
        assert ours.shape == theirs.shape and theirs.abs().max() > 0.1
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def tiny_unets(name: str):
    """diffusers' UNet of a tiny config with random weights, and lienzo's UNet with the same weights."""
    config = UNETS[name]
    torch.manual_seed(3)
    reference = diffusers.UNet2DConditionModel.from_config(unet_config_to_diffusers(config)).eval()
    randomize_parameters(reference, 3)
    model = UNetModel(config).eval()
    model.load_state_dict(unet_diffusers_to_ldm(reference.state_dict()), strict=True)
    return config, reference, model


@pytest.mark.parametrize("name", ["full", "xl"])
def test_unet_adds_features_where_diffusers_adds_intrablock_residuals(name):
    """Levels with attention take the feature before their downsampler, others after it (SDXL's first);
    the XL adapter's fourth feature goes after the middle block; ControlNet residuals sum alongside."""
    config, reference, model = tiny_unets(name)
    adapter = lienzo_adapter(reference_adapter(name))
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([7.0, 500.0])
    context = torch.randn(2, 5, config.context_dim)
    hint = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        features = [feature.expand(2, -1, -1, -1) for feature in adapter(hint)]
        expected = reference(x, t, context, down_intrablock_additional_residuals=list(features)).sample
        residuals = adapter.residuals(hint).map(lambda tensor: tensor.expand(2, -1, -1, -1))
        actual = model(x, t, Conditioning(context, control=residuals))
        plain = model(x, t, Conditioning(context))
        _, skips = model.encode(x, model.embed(t, None, 2, x.dtype), context)
        control = ControlResiduals(tuple(torch.randn_like(s) for s in skips), torch.randn_like(skips[-1]))
        both = reference(
            x,
            t,
            context,
            down_block_additional_residuals=control.skips,
            mid_block_additional_residual=control.middle,
            down_intrablock_additional_residuals=list(features),
        ).sample
        mixed = model(x, t, Conditioning(context, control=control + residuals))
    error = (actual - expected).abs().max().item()
    print(f"{name}: UNet output vs diffusers {error:.2e} (output magnitude {expected.abs().max():.1f})")
    assert (actual - plain).abs().max() > 0.05
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(mixed, both, rtol=0, atol=1e-4)


def test_every_layout_reads_the_same_weights(tmp_path):
    """diffusers folder, TencentARC .pth (weights-only pickle) and .safetensors, diffusers-named file."""
    for name, values in SINGLE_FILE_ADAPTERS.items():
        folder = adapter_folder(name)
        from_folder = read_controlnet(folder)
        original = t2i_adapter_original_to_diffusers(from_folder.state_dict, from_folder.config)
        assert original.keys() == reference_adapter(name).state_dict().keys()
        pth, single = tmp_path / f"t2iadapter_{name}_sd14v1.pth", tmp_path / f"{name}.safetensors"
        torch.save(from_folder.state_dict, pth)
        write_safetensors(single, from_folder.state_dict)
        diffusers_file = tmp_path / f"{name}-diffusers.safetensors"
        write_safetensors(diffusers_file, reference_adapter(name).state_dict())
        assert from_folder.layout == "t2i-adapter-folder"
        assert t2i_adapter_config_to_diffusers(from_folder.config) == {
            "_class_name": "T2IAdapter",
            "in_channels": 3,
            "num_res_blocks": 2,
            **values,
        }
        for path, layout in (
            (pth, "t2i-adapter"),
            (single, "t2i-adapter"),
            (diffusers_file, "t2i-adapter-diffusers-file"),
        ):
            found = read_controlnet(path)
            assert (found.layout, found.config) == (layout, from_folder.config)
            assert found.state_dict.keys() == from_folder.state_dict.keys()
            for key, value in found.state_dict.items():
                assert torch.equal(value, from_folder.state_dict[key]), key
    loaded = lienzo.load_controlnet(tmp_path / "xl16.safetensors", device="cpu", dtype=torch.float32)
    assert isinstance(loaded.model, T2IAdapter) and loaded.name == "xl16" and loaded.short_hash


def test_published_shapes_name_their_family_and_other_variants_are_refused(tmp_path):
    full = diffusers.T2IAdapter(in_channels=1, adapter_type="full_adapter")
    path = tmp_path / "t2iadapter_sketch_sd14v1.safetensors"
    config = t2i_adapter_config_from_diffusers(dict(full.config))
    write_safetensors(path, t2i_adapter_diffusers_to_original(full.state_dict(), config))
    found = read_controlnet(path)
    assert (found.family, found.config.in_channels, found.config.downscale_factor) == ("sd1", 1, 8)
    style = tmp_path / "t2iadapter_style_sd14v1.safetensors"
    write_safetensors(style, {"style_embedding": torch.zeros(1, 8, 4), "ln_pre.weight": torch.ones(4)})
    with pytest.raises(UnknownArchitectureError, match="style adapter"):
        read_controlnet(style)


def tiny_pipe(family: str):
    return lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32)


def latents(pipe, units) -> torch.Tensor:
    options = resolve_options(
        pipe.spec, prompt="a red circle", **SETTINGS, **pipe.resolve_controlnets({"controlnets": units})
    )
    return generate_latents(pipe, options, progress=False)


def test_strength_scales_modes_and_mixing_with_a_controlnet():
    pipe = tiny_pipe("sd1")
    adapter = pipe.load_controlnet(adapter_folder("full"))
    image = control_image(32, 4)
    plain = latents(pipe, [])
    off = latents(pipe, [lienzo.ControlUnit(adapter, image, strength=0.0)])
    on = latents(pipe, [lienzo.ControlUnit(adapter, image)])
    control = latents(pipe, [lienzo.ControlUnit(adapter, image, mode="control")])
    assert torch.equal(off, plain)
    assert (on - plain).abs().max() > 0.01 and (control - on).abs().max() > 0.01
    controlnet = controlnet_file("sd1", 1)
    mixed = latents(pipe, [lienzo.ControlUnit(adapter, image), lienzo.ControlUnit(controlnet, image)])
    assert (mixed - on).abs().max() > 0.01 and (
        mixed - latents(pipe, [lienzo.ControlUnit(controlnet, image)])
    ).abs().max() > 0.01
    assert adapter_scales("prompt", 2.0, 4) == [0.5, 1.24, 1.65, 2.0]
    assert (
        adapter_scales("control", 1.0, 2) == [0.825, 1.0] and adapter_scales("balanced", 0.5, 3) == [0.5] * 3
    )


def test_an_adapter_of_another_family_is_refused():
    sdxl = tiny_pipe("sdxl")
    with pytest.raises(InvalidArgumentError, match=r"T2I-Adapter for SD 1\.x .* the model is sdxl"):
        sdxl.load_controlnet(adapter_folder("full"))
    with pytest.raises(InvalidArgumentError, match=r"T2I-Adapter for SDXL .* the model is sd1"):
        tiny_pipe("sd1").load_controlnet(adapter_folder("xl"))


def test_names_resolve_in_comfyuis_t2i_adapter_folder(tmp_path):
    folder = tmp_path / "models" / "t2i_adapter" / "sketch"
    shutil.copytree(adapter_folder("full"), folder)
    assert ModelLibrary(tmp_path / "models").resolve("controlnet", "sketch") == folder
