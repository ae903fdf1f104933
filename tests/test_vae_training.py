"""VAE training on the shared loop: the reconstruction error falls; the latent scaling factor is 1/std."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lienzo.errors import InvalidArgumentError
from lienzo.models.vae import AutoencoderKL, VAEConfig
from lienzo.training import train
from lienzo.training.checkpoint import CHECKPOINT_NAME, load_training_state
from lienzo.training.vae_training import VAEObjective, edge_mask, latent_scaling_factor
from test_training import SquaresDataset, quick_config

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A 32x32 -> 4x8x8 autoencoder with seeded random weights."""
    torch.manual_seed(seed)
    return AutoencoderKL(VAEConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=4))


def fixed_images(count: int = 8) -> torch.Tensor:
    """The first `count` squares of the test dataset."""
    return torch.stack([SquaresDataset()[index]["image"] for index in range(count)])


@torch.no_grad()
def reconstruction_error(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Mean absolute error of decoding the posterior mean."""
    return float((vae.decode(vae.encode(images).mean) - images).abs().mean())


def test_vae_training_reduces_reconstruction_error(tmp_path: Path):
    vae = tiny_vae()
    images = fixed_images()
    before = reconstruction_error(vae, images)
    objective = VAEObjective(vae, reconstruction="l1")
    train(quick_config(12, ema_decay=None), objective, SquaresDataset(), tmp_path)
    after = reconstruction_error(vae, images)
    assert after < 0.7 * before, (before, after)
    state = load_training_state(tmp_path / CHECKPOINT_NAME)
    torch.testing.assert_close(state["modules"]["vae"]["vae.quant_conv.weight"], vae.quant_conv.weight)


def test_kl_term_is_weighted_per_pixel():
    vae = tiny_vae()
    images = fixed_images(2)
    generator_state = torch.Generator().manual_seed(3).get_state()
    plain = VAEObjective(vae, kl_weight=0.0)
    weighted = VAEObjective(vae, kl_weight=1.0)
    generator = torch.Generator()
    generator.set_state(generator_state)
    base = plain.loss({"image": images}, generator, {})
    generator.set_state(generator_state)
    total = weighted.loss({"image": images}, generator, {})
    kl = vae.encode(images).kl().mean() / images[0].numel()
    torch.testing.assert_close(total - base, kl, rtol=1e-4, atol=1e-6)


def test_latent_scaling_factor_is_one_over_latent_std():
    vae = tiny_vae()
    images = fixed_images(6)
    factor = latent_scaling_factor(vae, images, batch_size=4, seed=1)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        parts = [vae.encode(images[:4]).sample(generator), vae.encode(images[4:]).sample(generator)]
    latents = torch.cat(parts)
    assert factor == pytest.approx(1.0 / float(latents.std()), rel=1e-6)
    with torch.no_grad():
        vae.quant_conv.weight.mul_(2.0)
        vae.quant_conv.bias.mul_(2.0)
    assert latent_scaling_factor(vae, images, seed=1) < factor


def test_mse_reconstruction_is_the_mean_squared_error():
    vae = tiny_vae()
    images = fixed_images(2)
    generator = torch.Generator().manual_seed(4)
    loss = VAEObjective(vae, reconstruction="mse", kl_weight=0.0).loss({"image": images}, generator, {})
    generator = torch.Generator().manual_seed(4)
    posterior = vae.encode(images)
    noise = torch.randn(posterior.mean.shape, generator=generator)
    reconstruction = vae.decode(posterior.mean + posterior.std * noise)
    torch.testing.assert_close(loss, (reconstruction - images).pow(2).mean())


def test_unknown_reconstruction_loss_is_refused():
    with pytest.raises(InvalidArgumentError, match="l1, mse"):
        VAEObjective(tiny_vae(), reconstruction="huber")


def test_edge_mask_marks_a_band_around_edges_only():
    images = -torch.ones(1, 3, 16, 16)
    images[:, 0, 6:10, 6:10] = 1.0
    mask = edge_mask(images)[0, 0]
    assert mask.shape == (16, 16)
    assert mask[4:12, 4:12].all() and mask.sum() == 64, "the square and a 2-pixel band around it"
    assert edge_mask(-torch.ones(1, 3, 8, 8)).sum() == 0, "a flat image has no edges"


def test_edge_weight_counts_edge_pixels_more():
    vae = tiny_vae()
    images = fixed_images(2)
    reconstruction = torch.zeros_like(images)
    mask = edge_mask(images)
    error = (reconstruction - images).abs()
    weighted = VAEObjective(vae, edge_weight=4.0).reconstruction_error(reconstruction, images)
    weights = 1 + 4.0 * mask
    expected = (error * weights).sum() / (weights.sum() * images.shape[1])
    torch.testing.assert_close(weighted, expected)
    plain = VAEObjective(vae).reconstruction_error(reconstruction, images)
    torch.testing.assert_close(plain, error.mean())
    assert 0 < mask.mean() < 1 and not torch.isclose(weighted, plain)
    assert VAEObjective(vae, edge_weight=4.0).describe()["edge_weight"] == 4.0
