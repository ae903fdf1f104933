"""Training objectives: the loss of one batch dict and the optimizer's parameter groups; the latent
diffusion loss.

A dataset item is a dict of one sample's values; `lienzo.training.batch.collate` stacks tensors into
(B, ...) and lists strings and other values. The keys the built-in objectives read:

| key         | item value                                    | read by                                |
|-------------|-----------------------------------------------|----------------------------------------|
| `"image"`   | float tensor (C, H, W) in [-1, 1], or moments | LatentDiffusionObjective, VAEObjective |
| `"caption"` | str                                           | LatentDiffusionObjective               |

(moments: the VAE posterior's mean and log-variance stacked on channels, which
`LatentDiffusionObjective(..., encoded_inputs=True)` reads instead of images.)

Methods that need more data use these names: `"class_image"` and `"class_caption"` (prior
preservation), `"hint"` (a ControlNet's control image), `"mask"` (per-pixel loss weights, (1, H, W)),
`"input_ids"` (token ids).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypedDict

import torch
from torch import nn

from lienzo.diffusion import Conditioning, Denoiser, ModelSampling, parameterization_for
from lienzo.errors import InvalidArgumentError
from lienzo.models.clip import CLIPTextModel
from lienzo.models.specs import SD1, FamilySpec
from lienzo.models.unet import UNetModel
from lienzo.models.vae import AutoencoderKL, DiagonalGaussian
from lienzo.text.tokenizer import CLIPTokenizer
from lienzo.training.batch import Batch, batch_value

CAPTION_TOKENS = 77
"""Token length of an encoded caption: start, 75 tokens, end (one prompt chunk at inference)."""

Networks = dict[str, Callable[..., object]]
"""The callables the loss runs for each trainable module: the module itself or its DDP wrapper."""


class ParamGroup(TypedDict):
    """One optimizer parameter group: a name (for logs and checkpoints), its parameters, its learning rate."""

    name: str
    params: list[nn.Parameter]
    lr: float


class Objective(Protocol):
    """A training objective: the modules it trains, their optimizer groups and the loss of one batch."""

    trainable: dict[str, nn.Module]

    def param_groups(self, learning_rate: float) -> list[ParamGroup]:
        """The optimizer's groups, covering every trainable parameter that requires grad once;
        `learning_rate` (the TrainConfig's) for the groups without a rate of their own."""
        ...

    def loss(self, batch: Batch, generator: torch.Generator, networks: Networks) -> torch.Tensor:
        """Scalar loss of a batch dict; all randomness drawn from `generator` (a CPU generator)."""
        ...


def param_group(name: str, module: nn.Module, learning_rate: float) -> ParamGroup:
    """The parameters of `module` that require grad, as one optimizer group."""
    params = [param for param in module.parameters() if param.requires_grad]
    return {"name": name, "params": params, "lr": learning_rate}


def drop_captions(captions: Sequence[str], probability: float, generator: torch.Generator) -> list[str]:
    """Replace each caption by "" with `probability`, so the model also learns the unconditional
    prediction that classifier-free guidance needs (Ho & Salimans 2022)."""
    keep = torch.rand(len(captions), generator=generator) >= probability
    return [caption if kept else "" for caption, kept in zip(captions, keep.tolist(), strict=True)]


class LatentDiffusionObjective:
    """Latent diffusion loss (Rombach et al. 2022): VAE latents, uniform t, x = x0 + sigma_t * noise,
    UNet through the samplers' Denoiser scalings, loss from the same Parameterization (eps or v).

    With `encoded_inputs` the dataset yields the VAE posterior moments (mean and log-variance stacked on
    channels, as `AutoencoderKL.encode` computes them) instead of images, so a frozen VAE encodes once.
    `offset_noise` adds that much of one Gaussian per image and channel to the noise (Guttenberg 2023):
    plain eps-prediction barely learns to move a latent's mean, which is a flat image's colour.
    `min_snr_gamma` weights each sample by Min-SNR-gamma (Hang et al. 2023; 5 in the paper), so the
    nearly clean timesteps stop dominating the gradient. `unet_lr` and `text_encoder_lr` give the two
    parameter groups their own learning rates (None: the TrainConfig's), as LoRA fine-tuning does.
    The family `spec` gives the prediction type, the noise schedule and how the first text tower's
    output is read, the same ones sampling uses."""

    def __init__(
        self,
        unet: UNetModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        *,
        spec: FamilySpec = SD1,
        latent_scale: float | None = None,
        train_text_encoder: bool = False,
        caption_dropout: float = 0.1,
        encoded_inputs: bool = False,
        offset_noise: float = 0.0,
        min_snr_gamma: float | None = None,
        unet_lr: float | None = None,
        text_encoder_lr: float | None = None,
    ):
        if text_encoder_lr is not None and not train_text_encoder:
            raise InvalidArgumentError(
                "text_encoder_lr is set but the text encoder is frozen; pass train_text_encoder=True "
                "or leave text_encoder_lr unset"
            )
        for name, rate in (("unet_lr", unet_lr), ("text_encoder_lr", text_encoder_lr)):
            if rate is not None and rate < 0:
                raise InvalidArgumentError(f"{name} must be 0 or more, got {rate}")
        self.unet = unet
        self.vae = vae.requires_grad_(False).eval()
        self.text_encoder = text_encoder.requires_grad_(train_text_encoder)
        self.tokenizer = tokenizer
        self.text_encoder_spec = spec.text_encoders[0]
        self.parameterization = parameterization_for(spec.prediction)
        self.model_sampling = ModelSampling.from_config(spec.schedule)
        self.schedule = spec.schedule
        self.latent_scale = vae.config.scaling_factor if latent_scale is None else latent_scale
        self.caption_dropout = caption_dropout
        self.encoded_inputs = encoded_inputs
        self.offset_noise = offset_noise
        self.min_snr_gamma = min_snr_gamma
        self.learning_rates = {"unet": unet_lr, "text_encoder": text_encoder_lr}
        self.trainable: dict[str, nn.Module] = {"unet": unet}
        if train_text_encoder:
            self.trainable["text_encoder"] = text_encoder

    def describe(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        return {
            "prediction": type(self.parameterization).__name__,
            "latent_scale": self.latent_scale,
            "caption_dropout": self.caption_dropout,
            "trained": sorted(self.trainable),
            "schedule": self.schedule.summary(),
            "encoded_inputs": self.encoded_inputs,
            "offset_noise": self.offset_noise,
            "min_snr_gamma": self.min_snr_gamma,
        }

    def param_groups(self, learning_rate: float) -> list[ParamGroup]:
        """One group per trained module ("unet", then "text_encoder"), each at its own rate if it has one."""
        groups = []
        for name, module in self.trainable.items():
            rate = self.learning_rates[name]
            groups.append(param_group(name, module, learning_rate if rate is None else rate))
        return groups

    def encode_captions(self, captions: Sequence[str], networks: Networks) -> torch.Tensor:
        """Cross-attention context of the captions taken literally (one 77-token chunk, no prompt syntax)."""
        network = networks.get("text_encoder", self.text_encoder)
        ids = self.tokenizer(list(captions), length=CAPTION_TOKENS).to(self.text_encoder.device)
        spec = self.text_encoder_spec
        with torch.set_grad_enabled("text_encoder" in self.trainable and torch.is_grad_enabled()):
            output = network(
                ids, hidden_layer=spec.hidden_layer, final_norm=spec.final_norm, want_pooled=False
            )
        return output.hidden

    def loss(self, batch: Batch, generator: torch.Generator, networks: Networks) -> torch.Tensor:
        """Mean parameterization loss of a batch's "image" (in [-1, 1], or moments) and "caption"."""
        images = batch_value(batch, "image", type(self).__name__)
        captions = batch_value(batch, "caption", type(self).__name__)
        device = next(self.unet.parameters()).device
        with torch.no_grad():
            inputs = images.to(device)
            posterior = DiagonalGaussian(inputs) if self.encoded_inputs else self.vae.encode(inputs)
            latents = posterior.sample(generator).float() * self.latent_scale
        size = latents.shape[0]
        timesteps = torch.randint(0, self.model_sampling.num_timesteps, (size,), generator=generator)
        sigma = self.model_sampling.sigmas[timesteps].to(device)
        noise = torch.randn(latents.shape, generator=generator)
        if self.offset_noise:
            noise = noise + self.offset_noise * torch.randn(*latents.shape[:2], 1, 1, generator=generator)
        noise = noise.to(device)
        context = self.encode_captions(drop_captions(captions, self.caption_dropout, generator), networks)
        denoiser = Denoiser(networks.get("unet", self.unet), self.parameterization, self.model_sampling)
        weights = None
        if self.min_snr_gamma is not None:
            weights = self.parameterization.min_snr_weights(sigma, self.min_snr_gamma)
        return denoiser.loss(latents, noise, sigma, Conditioning(context), weights)
