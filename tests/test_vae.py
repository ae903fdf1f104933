"""AutoencoderKL against diffusers with identical random weights, and the ldm <-> diffusers maps."""

from __future__ import annotations

import pytest
import torch

from lienzo.errors import InvalidArgumentError, UnknownArchitectureError
from lienzo.io.keymaps.vae import (
    vae_config_from_diffusers,
    vae_config_from_state_dict,
    vae_config_to_diffusers,
    vae_diffusers_to_ldm,
    vae_ldm_to_diffusers,
)
from lienzo.models.vae import AutoencoderKL, DiagonalGaussian, VAEConfig
from tiny_models import randomize_parameters

diffusers = pytest.importorskip("diffusers")

TINY_CONFIGS = [
    VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8),
    VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, norm_groups=32, scaling_factor=0.13025),
]
PARITY_TOLERANCE = 1e-4


def _oracle_and_ours(config: VAEConfig, seed: int = 0):
    oracle = diffusers.AutoencoderKL.from_config(vae_config_to_diffusers(config)).eval()
    randomize_parameters(oracle, seed)
    ours = AutoencoderKL(config).eval()
    ours.load_state_dict(vae_diffusers_to_ldm(oracle.state_dict()), strict=True)
    return oracle, ours


def _images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_encode_decode_match_diffusers(config: VAEConfig):
    torch.manual_seed(0)
    oracle, ours = _oracle_and_ours(config)
    images = _images(2, 32)
    with torch.no_grad():
        expected = oracle.encode(images).latent_dist
        posterior = ours.encode(images)
        latents = torch.randn(2, config.z_channels, 8, 8)
        decoded_expected = oracle.decode(latents).sample
        decoded = ours.decode(latents)
    assert posterior.mean.shape == (
        2,
        config.z_channels,
        32 // ours.downscale_factor,
        32 // ours.downscale_factor,
    )
    assert (posterior.mean - expected.mean).abs().max() < PARITY_TOLERANCE
    assert (posterior.logvar - expected.logvar).abs().max() < PARITY_TOLERANCE
    assert (posterior.std - expected.std).abs().max() < PARITY_TOLERANCE
    assert decoded.shape == (2, 3, 8 * ours.downscale_factor, 8 * ours.downscale_factor)
    assert decoded.abs().max() > 1e-2
    assert (decoded - decoded_expected).abs().max() < PARITY_TOLERANCE


def test_sample_reproduces_with_seeded_generator():
    oracle, ours = _oracle_and_ours(TINY_CONFIGS[0])
    images = _images(1, 16)
    with torch.no_grad():
        posterior = ours.encode(images)
        first = posterior.sample(torch.Generator().manual_seed(42))
        again = posterior.sample(torch.Generator().manual_seed(42))
        other = posterior.sample(torch.Generator().manual_seed(43))
        expected = oracle.encode(images).latent_dist.sample(torch.Generator().manual_seed(42))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert (first - expected).abs().max() < PARITY_TOLERANCE


def test_gaussian_clamps_logvar_and_kl_matches_diffusers():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    moments = torch.randn(2, 8, 4, 4) * 3
    moments[:, 4:, 0, 0] = torch.tensor([-100.0, 100.0]).view(2, 1)
    ours, expected = DiagonalGaussian(moments), DiagonalGaussianDistribution(moments)
    assert ours.logvar.min() == -30.0 and ours.logvar.max() == 20.0
    assert torch.equal(ours.logvar, expected.logvar)
    assert torch.allclose(ours.kl(), expected.kl(), rtol=1e-5)


@pytest.mark.parametrize("config", TINY_CONFIGS)
def test_key_maps_round_trip_exactly(config: VAEConfig):
    oracle, ours = _oracle_and_ours(config)
    diffusers_sd = oracle.state_dict()
    back = vae_ldm_to_diffusers(vae_diffusers_to_ldm(diffusers_sd), config)
    assert back.keys() == diffusers_sd.keys()
    assert all(torch.equal(back[key], diffusers_sd[key]) for key in diffusers_sd)
    ldm_sd = ours.state_dict()
    again = vae_diffusers_to_ldm(vae_ldm_to_diffusers(ldm_sd, config))
    assert again.keys() == ldm_sd.keys()
    assert all(torch.equal(again[key], ldm_sd[key]) for key in ldm_sd)


def test_decoder_levels_are_reversed_between_layouts():
    config = TINY_CONFIGS[1]
    ldm_sd = AutoencoderKL(config).state_dict()
    mapped = vae_ldm_to_diffusers(ldm_sd, config)
    assert torch.equal(
        mapped["decoder.up_blocks.0.upsamplers.0.conv.weight"], ldm_sd["decoder.up.2.upsample.conv.weight"]
    )
    assert "decoder.up_blocks.2.upsamplers.0.conv.weight" not in mapped
    assert mapped["encoder.mid_block.attentions.0.to_q.weight"].shape == (64, 64)


def test_legacy_attention_names_are_read():
    config = TINY_CONFIGS[0]
    oracle, _ = _oracle_and_ours(config)
    modern = oracle.state_dict()
    legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, tensor in modern.items():
        for new, old in legacy_names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[key] = tensor
    assert any(".query." in key for key in legacy)
    from_legacy, from_modern = vae_diffusers_to_ldm(legacy), vae_diffusers_to_ldm(modern)
    assert from_legacy.keys() == from_modern.keys()
    assert all(torch.equal(from_legacy[key], from_modern[key]) for key in from_modern)


@pytest.mark.parametrize("config", [*TINY_CONFIGS, VAEConfig()])
def test_configs_round_trip(config: VAEConfig):
    assert vae_config_from_diffusers(vae_config_to_diffusers(config)) == config
    with torch.device("meta"):
        ldm_sd = AutoencoderKL(config).state_dict()
    inferred = vae_config_from_state_dict(
        ldm_sd, scaling_factor=config.scaling_factor, norm_groups=config.norm_groups
    )
    assert inferred == config


def test_config_reads_a_diffusers_config_json():
    sdxl_json = {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 1024,
        "scaling_factor": 0.13025,
    }
    assert vae_config_from_diffusers(sdxl_json) == VAEConfig(scaling_factor=0.13025)


def test_user_errors_raise_lienzo_errors():
    with pytest.raises(InvalidArgumentError, match="embed_dim"):
        vae_config_to_diffusers(VAEConfig(embed_dim=8))
    with pytest.raises(UnknownArchitectureError, match="not the latent-diffusion VAE"):
        vae_config_from_diffusers({"block_out_channels": [64], "use_quant_conv": False})
    with pytest.raises(UnknownArchitectureError, match="first_stage_model"):
        vae_diffusers_to_ldm({"decoder.up_blocks.0.resnets.0.foo.weight": torch.zeros(1)})
    with pytest.raises(UnknownArchitectureError, match="first_stage_model"):
        vae_ldm_to_diffusers({"first_stage_model.quant_conv.weight": torch.zeros(1)}, VAEConfig())
    with pytest.raises(UnknownArchitectureError, match="encoder.conv_in.weight"):
        vae_config_from_state_dict({"quant_conv.weight": torch.zeros(8, 8, 1, 1)})


def test_bf16_channels_last_decode_tracks_fp32():
    _, ours = _oracle_and_ours(TINY_CONFIGS[1])
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = ours.decode(latents)
        fast = ours.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        decoded = fast.decode(latents.to(memory_format=torch.channels_last))
        posterior = fast.encode(_images(1, 16).to(memory_format=torch.channels_last))
    assert decoded.dtype == torch.bfloat16 and posterior.mean.dtype == torch.bfloat16
    relative = (decoded.float() - reference).norm() / reference.norm()
    assert relative < 0.05


def _full_size_pair(device: str):
    config = VAEConfig()
    with torch.device(device):
        oracle = diffusers.AutoencoderKL.from_config(vae_config_to_diffusers(config))
        ours = AutoencoderKL(config)
    return config, oracle, ours


def test_full_size_keys_and_shapes_match_diffusers_conversion():
    config, oracle, ours = _full_size_pair("meta")
    converted = {key: tuple(value.shape) for key, value in vae_diffusers_to_ldm(oracle.state_dict()).items()}
    own = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    assert converted == own
    assert len(own) == 248
    back = {key: tuple(value.shape) for key, value in vae_ldm_to_diffusers(ours.state_dict(), config).items()}
    assert back == {key: tuple(value.shape) for key, value in oracle.state_dict().items()}


@pytest.mark.slow
def test_full_size_parity_with_diffusers():
    _, oracle, ours = _full_size_pair("cpu")
    randomize_parameters(oracle, seed=5)
    ours.load_state_dict(vae_diffusers_to_ldm(oracle.state_dict()), strict=True)
    images = _images(1, 64)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected_posterior = oracle.encode(images).latent_dist
        posterior = ours.encode(images)
        expected_images = oracle.decode(latents).sample
        decoded = ours.decode(latents)
    assert (posterior.mean - expected_posterior.mean).abs().max() < 1e-3
    assert (posterior.logvar - expected_posterior.logvar).abs().max() < 1e-3
    assert (decoded - expected_images).abs().max() < 1e-3
