"""UNet parity with diffusers' UNet2DConditionModel, key and config maps, config inference."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from lienzo.errors import InvalidArgumentError, UnknownArchitectureError
from lienzo.io.keymaps.unet import (
    unet_config_from_diffusers,
    unet_config_from_state_dict,
    unet_config_to_diffusers,
    unet_diffusers_to_ldm,
    unet_ldm_to_diffusers,
)
from lienzo.models.blocks import timestep_embedding
from lienzo.models.conditioning import Conditioning, ControlResiduals
from lienzo.models.specs import SD1, SD2, SDXL, SDXL_REFINER, family_spec
from lienzo.models.unet import UNetConfig, UNetModel, sdxl_vector_conditioning

POOLED = 16
TINY = {
    "sd1": UNetConfig(
        model_channels=32,
        channel_mult=(1, 2),
        transformer_depth=(1, 1),
        num_heads=2,
        context_dim=32,
        norm_groups=8,
    ),
    "sd2": UNetConfig(
        model_channels=32,
        channel_mult=(1, 2, 2),
        transformer_depth=(1, 2, 0),
        num_head_channels=16,
        context_dim=24,
        use_linear_in_transformer=True,
        norm_groups=8,
    ),
    "sdxl": UNetConfig(
        model_channels=32,
        channel_mult=(1, 2, 2),
        transformer_depth=(0, 1, 2),
        transformer_depth_middle=2,
        num_head_channels=16,
        context_dim=32,
        use_linear_in_transformer=True,
        adm_in_channels=POOLED + 6 * 256,
        norm_groups=8,
    ),
    "refiner": UNetConfig(
        model_channels=32,
        channel_mult=(1, 2, 2),
        transformer_depth=(0, 2, 0),
        transformer_depth_middle=2,
        num_head_channels=16,
        context_dim=24,
        use_linear_in_transformer=True,
        adm_in_channels=POOLED + 5 * 256,
        norm_groups=32,
    ),
    "inpaint": UNetConfig(
        in_channels=9,
        model_channels=32,
        channel_mult=(1, 2),
        transformer_depth=(1, 1),
        num_heads=4,
        context_dim=32,
        num_res_blocks=1,
        norm_groups=8,
    ),
    "depth": UNetConfig(
        in_channels=5,
        model_channels=32,
        channel_mult=(1, 2, 2),
        transformer_depth=(1, 1, 0),
        num_head_channels=8,
        context_dim=32,
        use_linear_in_transformer=True,
        norm_groups=8,
    ),
}
TIME_IDS = {
    6: torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0], [48.0, 80.0, 8.0, 4.0, 64.0, 64.0]]),
    5: torch.tensor([[64.0, 64.0, 0.0, 0.0, 6.0], [48.0, 80.0, 8.0, 4.0, 2.5]]),
}


def random_diffusers_unet(config: UNetConfig) -> UNet2DConditionModel:
    """diffusers' UNet for `config` with every parameter drawn from a normal (no zero-initialised layers)."""
    model = UNet2DConditionModel.from_config(unet_config_to_diffusers(config)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model


def lienzo_unet_from(diffusers_model: UNet2DConditionModel, config: UNetConfig) -> UNetModel:
    """Our UNet loaded strictly with the diffusers model's weights (shared tensors, no copy)."""
    with torch.device("meta"):
        model = UNetModel(config).eval()
    model.load_state_dict(unet_diffusers_to_ldm(diffusers_model.state_dict()), strict=True, assign=True)
    return model


@pytest.mark.parametrize("size", [(16, 16), (9, 11)], ids=["even", "odd"])
@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_unet_matches_diffusers(name: str, size: tuple[int, int]) -> None:
    """Odd latent sizes (e.g. 72x88 px) downsample to rounded-up sizes; Upsample meets the skips there."""
    torch.manual_seed(0)
    config = TINY[name]
    reference = random_diffusers_unet(config)
    model = lienzo_unet_from(reference, config)
    x = torch.randn(2, config.in_channels, *size)
    t = torch.tensor([3.0, 911.5])
    context = torch.randn(2, 7, config.context_dim)
    with torch.inference_mode():
        if config.adm_in_channels is None:
            expected = reference(x, t, context).sample
            actual = model(x, t, Conditioning(context))
        else:
            pooled = torch.randn(2, POOLED)
            time_ids = TIME_IDS[(config.adm_in_channels - POOLED) // 256]
            added = {"text_embeds": pooled, "time_ids": time_ids}
            expected = reference(x, t, context, added_cond_kwargs=added).sample
            actual = model(x, t, Conditioning(context, sdxl_vector_conditioning(pooled, time_ids, 256)))
    assert actual.shape == (2, config.out_channels, *size)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)


def test_bf16_channels_last_stays_close_to_fp32() -> None:
    torch.manual_seed(0)
    config = TINY["sd2"]
    reference = random_diffusers_unet(config)
    model = UNetModel(config).eval()
    model.load_state_dict(unet_diffusers_to_ldm(reference.state_dict()), strict=True)
    x, t, context = torch.randn(1, 4, 16, 16), torch.tensor([500.0]), torch.randn(1, 5, config.context_dim)
    with torch.inference_mode():
        expected = reference(x, t, context).sample
        fast = model.to(torch.bfloat16, memory_format=torch.channels_last)
        actual = fast(
            x.to(torch.bfloat16, memory_format=torch.channels_last),
            t,
            Conditioning(context.to(torch.bfloat16)),
        )
    assert actual.dtype == torch.bfloat16
    relative = (actual.float() - expected).norm() / expected.norm()
    assert relative < 0.05


@pytest.mark.parametrize("name", sorted(TINY))
def test_key_maps_round_trip(name: str) -> None:
    config = TINY[name]
    diffusers_sd = random_diffusers_unet(config).state_dict()
    ldm_sd = unet_diffusers_to_ldm(diffusers_sd)
    assert set(ldm_sd) == set(UNetModel(config).state_dict())
    back = unet_ldm_to_diffusers(ldm_sd, config)
    assert list(back) == list(diffusers_sd)
    assert all(back[key] is diffusers_sd[key] for key in diffusers_sd)
    assert unet_diffusers_to_ldm(back).keys() == ldm_sd.keys()


@pytest.mark.parametrize("name", sorted(TINY))
def test_config_round_trips_and_inference(name: str) -> None:
    config = TINY[name]
    assert unet_config_from_diffusers(unet_config_to_diffusers(config)) == config
    inferred = unet_config_from_state_dict(
        UNetModel(config).state_dict(),
        num_heads=config.num_heads,
        num_head_channels=config.num_head_channels,
        norm_groups=config.norm_groups,
    )
    assert inferred == config


FULL_SIZE = {
    "sd1": SD1.unet,
    "sd2": SD2.unet,
    "sdxl": SDXL.unet,
    "sdxl-refiner": SDXL_REFINER.unet,
    "sd1-inpaint": family_spec("sd1-inpaint").unet,
    "sd2-depth": family_spec("sd2-depth").unet,
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_layout_matches_diffusers_conversion(name: str) -> None:
    config = FULL_SIZE[name]
    diffusers_config = unet_config_to_diffusers(config)
    with torch.device("meta"):
        ours = UNetModel(config).state_dict()
        reference = UNet2DConditionModel.from_config(diffusers_config).state_dict()
    checkpoint = {f"model.diffusion_model.{key}": value for key, value in ours.items()}
    converted = convert_ldm_unet_checkpoint(checkpoint, diffusers_config)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in reference.items()}
    mapped = unet_ldm_to_diffusers(ours, config)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in reference.items()}
    assert unet_config_from_diffusers(diffusers_config) == config


def test_full_size_diffusers_configs_match_published_values() -> None:
    sd2 = unet_config_to_diffusers(SD2.unet)
    assert sd2["attention_head_dim"] == [5, 10, 20, 20] and sd2["use_linear_projection"]
    sdxl = unet_config_to_diffusers(SDXL.unet)
    assert sdxl["transformer_layers_per_block"] == [1, 2, 10]
    assert sdxl["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert sdxl["projection_class_embeddings_input_dim"] == 2816
    refiner = unet_config_to_diffusers(SDXL_REFINER.unet)
    assert refiner["transformer_layers_per_block"] == 4 and refiner["attention_head_dim"] == [6, 12, 24, 24]
    assert unet_config_to_diffusers(SD1.unet)["attention_head_dim"] == 8


def test_config_inference_on_full_size_layouts() -> None:
    for config in (SD1.unet, SD2.unet, SDXL.unet, SDXL_REFINER.unet):
        with torch.device("meta"):
            sd = UNetModel(config).state_dict()
        inferred = unet_config_from_state_dict(
            sd, num_heads=config.num_heads, num_head_channels=config.num_head_channels
        )
        assert inferred == config


def test_sdxl_vector_conditioning_width_and_layout() -> None:
    pooled = torch.randn(2, 1280)
    y = sdxl_vector_conditioning(pooled, TIME_IDS[6], 256)
    assert y.shape == (2, 2816)
    assert sdxl_vector_conditioning(torch.randn(2, 1280), TIME_IDS[5], 256).shape == (2, 2560)
    assert torch.equal(y[:, :1280], pooled)
    assert torch.equal(y[1, 1280 + 256 : 1280 + 512], timestep_embedding(torch.tensor([80.0]), 256)[0])


def test_timestep_embedding_is_cos_then_sin() -> None:
    embedding = timestep_embedding(torch.tensor([0.0, 7.0]), 8)
    assert torch.equal(embedding[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert torch.allclose(embedding[1, 0], torch.cos(torch.tensor(7.0)))
    assert torch.allclose(embedding[1, 4], torch.sin(torch.tensor(7.0)))
    assert timestep_embedding(torch.tensor([1.0]), 7).shape == (1, 7)


def test_vector_conditioning_is_required_exactly_when_configured() -> None:
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([1.0])
    sdxl = UNetModel(TINY["sdxl"])
    with pytest.raises(ValueError, match="sdxl_vector_conditioning"):
        sdxl(x, t, Conditioning(torch.randn(1, 3, 32)))
    sd1 = UNetModel(TINY["sd1"])
    with pytest.raises(ValueError, match="y=None"):
        sd1(x, t, Conditioning(torch.randn(1, 3, 32), torch.randn(1, 8)))


def test_scalar_timestep_is_broadcast_over_the_batch() -> None:
    torch.manual_seed(0)
    model = UNetModel(TINY["sd1"]).eval()
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 32)
    with torch.inference_mode():
        torch.testing.assert_close(
            model(x, torch.tensor(250.0), Conditioning(context)),
            model(x, torch.tensor([250.0] * 2), Conditioning(context)),
        )


def test_maps_reject_foreign_keys_and_unsupported_configs() -> None:
    config = TINY["sd1"]
    with pytest.raises(UnknownArchitectureError, match="model.diffusion_model"):
        unet_ldm_to_diffusers({"model.diffusion_model.out.2.weight": torch.zeros(1)}, config)
    with pytest.raises(UnknownArchitectureError, match="UNet2DConditionModel"):
        unet_diffusers_to_ldm({"encoder.conv_in.weight": torch.zeros(1)})
    with pytest.raises(InvalidArgumentError, match="last level"):
        unet_config_to_diffusers(UNetConfig(transformer_depth=(1, 1, 1, 2)))
    with pytest.raises(UnknownArchitectureError, match="Stable Diffusion"):
        unet_config_from_diffusers({"down_block_types": ["AttnDownBlock2D"]})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd1", "sd2", "sdxl"])
def test_full_size_unet_matches_diffusers(name: str) -> None:
    torch.manual_seed(0)
    config = FULL_SIZE[name]
    reference = random_diffusers_unet(config)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.mul_(0.1)
    model = lienzo_unet_from(reference, config)
    x, t = torch.randn(1, config.in_channels, 32, 32), torch.tensor([700.0])
    context = torch.randn(1, 77, config.context_dim)
    with torch.inference_mode():
        if config.adm_in_channels is None:
            expected = reference(x, t, context).sample
            actual = model(x, t, Conditioning(context))
        else:
            pooled, time_ids = torch.randn(1, 1280), TIME_IDS[6][:1]
            added = {"text_embeds": pooled, "time_ids": time_ids}
            expected = reference(x, t, context, added_cond_kwargs=added).sample
            actual = model(x, t, Conditioning(context, sdxl_vector_conditioning(pooled, time_ids, 256)))
    scale = expected.abs().max().item()
    assert scale > 0.01
    assert (actual - expected).abs().max().item() <= 1e-4 * scale


def test_control_residuals_match_diffusers_additional_residuals() -> None:
    """cond.control adds to every skip and after the middle block, as diffusers' ControlNet inputs do."""
    torch.manual_seed(0)
    config = TINY["sd1"]
    reference = random_diffusers_unet(config)
    model = lienzo_unet_from(reference, config)
    x, t, context = (
        torch.randn(2, 4, 16, 16),
        torch.tensor([3.0, 600.0]),
        torch.randn(2, 7, config.context_dim),
    )
    with torch.inference_mode():
        _, skips = model.encode(x, model.embed(t, None, 2, x.dtype), context)
        residuals = [torch.randn_like(skip) for skip in skips]
        middle = torch.randn_like(skips[-1])
        expected = reference(
            x,
            t,
            context,
            down_block_additional_residuals=tuple(residuals),
            mid_block_additional_residual=middle,
        ).sample
        actual = model(x, t, Conditioning(context, control=ControlResiduals(tuple(residuals), middle)))
        plain = model(x, t, Conditioning(context))
    assert (actual - plain).abs().max() > 0.01
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="ControlNet made for this model family"):
        model(x, t, Conditioning(context, control=ControlResiduals(tuple(residuals[:-1]), middle)))


def test_concat_channels_are_appended_to_the_input() -> None:
    """cond.concat (batch 1 stands for every row) is the UNet's extra input channels."""
    torch.manual_seed(0)
    config = replace(TINY["sd1"], in_channels=9)
    model = UNetModel(config).eval()
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 600.0]), torch.randn(2, 7, config.context_dim)
    extra = torch.randn(1, 5, 8, 8)
    with torch.inference_mode():
        joined = model(torch.cat([x, extra.expand(2, -1, -1, -1)], dim=1), t, Conditioning(context))
        torch.testing.assert_close(model(x, t, Conditioning(context, concat=extra)), joined)


def test_addition_time_embed_dim_sets_the_vector_width() -> None:
    """An SDXL UNet whose size/crop values embed in 8 dims takes y of width pooled + 6 * 8."""
    config = replace(TINY["sdxl"], adm_in_channels=POOLED + 6 * 8, addition_time_embed_dim=8)
    model = UNetModel(config).eval()
    y = sdxl_vector_conditioning(torch.randn(1, POOLED), TIME_IDS[6][:1], config.addition_time_embed_dim)
    with torch.inference_mode():
        out = model(torch.randn(1, 4, 8, 8), torch.tensor([10.0]), Conditioning(torch.randn(1, 3, 32), y))
    assert out.shape == (1, 4, 8, 8)
