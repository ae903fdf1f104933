"""VAE training on the shared loop: reconstruction plus a small KL term, and the latent scaling factor."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lienzo.errors import InvalidArgumentError
from lienzo.models.vae import AutoencoderKL
from lienzo.training.batch import Batch, batch_value
from lienzo.training.objective import Networks, ParamGroup, param_group

RECONSTRUCTION_LOSSES = ("l1", "mse")


def edge_mask(images: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """1 where a (2 radius + 1)-pixel square around a pixel spans more than 0.1 in some channel (a local
    max - min filter: edges and the thin parts of shapes), else 0; shape (N, 1, H, W)."""
    size = 2 * radius + 1
    spread = F.max_pool2d(images, size, 1, radius) + F.max_pool2d(-images, size, 1, radius)
    return (spread.amax(dim=1, keepdim=True) > 0.1).float()


class VAERoundTrip(nn.Module):
    """Encode, draw a latent with the given noise, decode: one forward pass DDP can wrap."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction of `images` and the per-image KL(q(z|x) || N(0, I))."""
        posterior = self.vae.encode(images)
        latents = posterior.mean + posterior.std * noise.to(posterior.mean.dtype)
        return self.vae.decode(latents), posterior.kl()


class VAEObjective:
    """KL-regularised autoencoder loss (Kingma & Welling 2014; Rombach et al. 2022, sec. 3.1).

    loss = mean reconstruction error per pixel + kl_weight * KL per image / pixels per image, which keeps
    ldm's ratio (pixel-summed reconstruction + 1e-6 * KL) at kl_weight = 1e-6. With `train_encoder=False`
    only the decoder learns (as SD's ft-MSE/ft-EMA decoders were tuned): the latents, and every model
    trained on them, stay valid.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        *,
        reconstruction: str = "l1",
        kl_weight: float = 1e-6,
        train_encoder: bool = True,
        edge_weight: float = 0.0,
    ):
        if reconstruction not in RECONSTRUCTION_LOSSES:
            raise InvalidArgumentError(f"unknown reconstruction loss {reconstruction!r}; use one of: l1, mse")
        self.vae = vae.requires_grad_(True).train()
        if not train_encoder:
            vae.encoder.requires_grad_(False).eval()
            vae.quant_conv.requires_grad_(False)
        self.train_encoder = train_encoder
        self.round_trip = VAERoundTrip(vae)
        self.reconstruction = reconstruction
        self.kl_weight = kl_weight
        self.edge_weight = edge_weight
        self.trainable: dict[str, nn.Module] = {"vae": self.round_trip}

    def describe(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        description = {"reconstruction": self.reconstruction, "kl_weight": self.kl_weight}
        if not self.train_encoder:
            description["trained"] = "decoder"
        if self.edge_weight:
            description["edge_weight"] = self.edge_weight
        return description

    def param_groups(self, learning_rate: float) -> list[ParamGroup]:
        """One group, "vae": the autoencoder's trained parameters (the decoder's alone, untrained encoder)."""
        return [param_group("vae", self.round_trip, learning_rate)]

    def reconstruction_error(self, reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Mean L1 or squared error per pixel and channel; with `edge_weight` w, a weighted mean that counts
        pixels near an edge of the target 1 + w times (edge_mask)."""
        error = (reconstruction.float() - images.float()).abs()
        if self.reconstruction == "mse":
            error = error.square()
        if not self.edge_weight:
            return error.mean()
        weights = 1.0 + self.edge_weight * edge_mask(images.float())
        return (error * weights).sum() / (weights.sum() * images.shape[1])

    def loss(self, batch: Batch, generator: torch.Generator, networks: Networks) -> torch.Tensor:
        """Reconstruction + weighted KL of a batch's "image" (in [-1, 1]); other keys are ignored."""
        device = self.vae.quant_conv.weight.device
        images = batch_value(batch, "image", type(self).__name__).to(device)
        factor = self.vae.downscale_factor
        latent_shape = (
            images.shape[0],
            self.vae.config.embed_dim,
            images.shape[2] // factor,
            images.shape[3] // factor,
        )
        noise = torch.randn(latent_shape, generator=generator).to(device)
        reconstruction, kl = networks.get("vae", self.round_trip)(images, noise)
        pixels_per_image = images[0].numel()
        return (
            self.reconstruction_error(reconstruction, images)
            + self.kl_weight * kl.float().mean() / pixels_per_image
        )


@torch.no_grad()
def latent_scaling_factor(
    vae: AutoencoderKL, images: torch.Tensor, *, batch_size: int = 16, seed: int = 0
) -> float:
    """1 / std of sampled latents over `images` (N, C, H, W) in [-1, 1]: how SD's 0.18215 was found
    (Rombach et al. 2022, sec. 4.3.2 and appendix G), so scaled latents have unit variance."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise InvalidArgumentError(
            f"latent_scaling_factor needs a batch of images (N, C, H, W), got shape {tuple(images.shape)}"
        )
    generator = torch.Generator().manual_seed(seed)
    device = vae.quant_conv.weight.device
    latents = [
        vae.encode(images[start : start + batch_size].to(device)).sample(generator).float().cpu()
        for start in range(0, images.shape[0], batch_size)
    ]
    return float(1.0 / torch.cat(latents).flatten().std())
