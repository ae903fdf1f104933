"""ControlNet training (Zhang et al. 2023; `lienzo train controlnet`): a copy of the frozen model's UNet
encoder with zero convolutions, fed control images, trained with the latent diffusion loss through the
UNet it steers; saved as a diffusers ControlNet folder that `--controlnet FOLDER` loads."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from lienzo.errors import InvalidArgumentError
from lienzo.io.checkpoints import staged_output
from lienzo.io.diffusers_folder import DIFFUSERS_VERSION, DIFFUSERS_WEIGHTS
from lienzo.io.formats import write_safetensors
from lienzo.io.keymaps.controlnet import controlnet_config_to_diffusers, controlnet_ldm_to_diffusers
from lienzo.models.conditioning import Conditioning
from lienzo.models.controlnet import ControlNet, controlnet_config_for
from lienzo.training.batch import Batch, batch_value
from lienzo.training.captioned_dataset import CaptionedDataset
from lienzo.training.control_images import (
    CONTROL_CACHE,
    ControlledDataset,
    Preprocessor,
    check_control_kind,
    control_paths,
)
from lienzo.training.latent_cache import CACHE_FOLDER, cache_latents
from lienzo.training.loop import SampleFn, train
from lienzo.training.method_run import (
    RUN_SUFFIX,
    RunOptions,
    check_trainable_family,
    diffusion_objective,
    is_main_process,
    train_config,
)
from lienzo.training.objective import LatentDiffusionObjective, Networks, ParamGroup, param_group

CONTROLNET_ONLY = ("input_hint_block.", "zero_convs.", "middle_block_out.")
"""The ControlNet's own modules (everything else is copied from the UNet's encoder)."""


def controlnet_run_folder(out: Path) -> Path:
    """The folder beside the output folder holding the resumable state, loss log, samples and caches."""
    return out.with_name(out.name + RUN_SUFFIX)


def new_controlnet(unet: nn.Module, vae_factor: int, hint_from: ControlNet | None = None) -> ControlNet:
    """A ControlNet for `unet`: its encoder's weights copied, the hint block randomly initialised but for
    its last convolution, which is zero like every zero convolution, so it adds nothing until trained.
    With `hint_from` the hint block (the control-image encoder) starts as that ControlNet's instead; the
    zero convolutions stay zero, so the new network still adds nothing until trained."""
    controlnet = ControlNet(controlnet_config_for(unet.config, vae_factor))
    own = controlnet.state_dict()
    encoder = {key: value for key, value in unet.state_dict().items() if key in own}
    missing = controlnet.load_state_dict(encoder, strict=False).missing_keys
    uncopied = [key for key in missing if not key.startswith(CONTROLNET_ONLY)]
    if uncopied:
        raise ValueError(f"the UNet lacks encoder weights the ControlNet copies: {', '.join(uncopied[:5])}")
    zeroed = [*controlnet.zero_convs, controlnet.middle_block_out, controlnet.input_hint_block[-1]]
    for module in zeroed:
        for param in module.parameters():
            nn.init.zeros_(param)
    if hint_from is not None:
        copy_hint_block(hint_from, controlnet)
    param = next(unet.parameters())
    return controlnet.to(device=param.device, dtype=param.dtype).train()


def copy_hint_block(source: ControlNet, target: ControlNet) -> None:
    """`source`'s hint block weights into `target`'s: both must read the same control images (channels) to
    the same widths and end at the same model channels, whatever the UNets they steer."""
    theirs, ours = source.controlnet_config, target.controlnet_config
    shapes = (theirs.hint_channels, theirs.hint_block_channels, theirs.unet.model_channels)
    wanted = (ours.hint_channels, ours.hint_block_channels, ours.unet.model_channels)
    if shapes != wanted:
        raise InvalidArgumentError(
            "the hint block to start from does not fit this model's ControlNet: it reads "
            f"{shapes[0]} channels through widths {list(shapes[1])} to {shapes[2]} model channels, this "
            f"one needs {wanted[0]} through {list(wanted[1])} to {wanted[2]}"
        )
    target.input_hint_block.load_state_dict(source.input_hint_block.state_dict())


class ControlledUNet(nn.Module):
    """The UNet given the ControlNet's residuals for `hint` in `Conditioning.control` (the Denoiser's net)."""

    def __init__(self, unet: nn.Module, controlnet: Callable, hint: torch.Tensor):
        super().__init__()
        self.unet, self.controlnet, self.hint = unet, controlnet, hint

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.unet(x, t, replace(cond, control=self.controlnet(x, self.hint, t, cond)))


class ControlNetObjective(LatentDiffusionObjective):
    """The latent diffusion loss of the frozen UNet steered by a trained ControlNet (batch key "hint")."""

    def use_controlnet(self, controlnet: ControlNet, control: str) -> None:
        """Train only `controlnet`; the UNet (and text encoder) stay frozen."""
        self.unet.requires_grad_(False)
        self.controlnet = controlnet
        self.control = control
        self.trainable = {"controlnet": controlnet}

    def describe(self) -> dict:
        return super().describe() | {"control": self.control}

    def param_groups(self, learning_rate: float) -> list[ParamGroup]:
        rate = self.learning_rates["unet"]
        return [param_group("controlnet", self.controlnet, learning_rate if rate is None else rate)]

    def loss(self, batch: Batch, generator: torch.Generator, networks: Networks) -> torch.Tensor:
        hint = batch_value(batch, "hint", type(self).__name__)
        hint = hint.to(next(self.controlnet.parameters()).device)
        steered = ControlledUNet(self.unet, networks.get("controlnet", self.controlnet), hint)
        return super().loss(batch, generator, {**networks, "unet": steered})


def write_controlnet_folder(controlnet: ControlNet, out: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A diffusers ControlNetModel folder (config.json + diffusion_pytorch_model.safetensors), written whole
    or not at all."""
    config = controlnet.controlnet_config
    weights = controlnet_ldm_to_diffusers(controlnet.state_dict(), config)
    values = {"_diffusers_version": DIFFUSERS_VERSION, **controlnet_config_to_diffusers(config)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_output(out) as staged:
        staged.mkdir()
        (staged / "config.json").write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        tensors = {key: value.detach().to(dtype) for key, value in weights.items()}
        write_safetensors(staged / f"{DIFFUSERS_WEIGHTS}.safetensors", tensors, {"format": "pt"})
    return out


def train_controlnet(
    options: RunOptions,
    model,
    out: str | Path,
    *,
    control: str | None,
    control_options: dict | None = None,
    preprocess: Preprocessor | None = None,
    resume: bool = False,
    fp16: bool = False,
    sampler: Callable[[ControlNet, Path], SampleFn] | None = None,
    device: torch.device | str | None = None,
    hint_from: ControlNet | None = None,
) -> Path:
    """Train a ControlNet for `model` (a loaded model, float32, frozen) on `options.data` and write it to
    the folder `out` (fp16 weights with `fp16`); state, loss log and samples go to
    `controlnet_run_folder(out)`.

    Control images are the `name.control.png` files beside the images, else (with `control`) the
    preprocessor's maps, made by `preprocess` (lienzo.pipelines.preprocessors.preprocess) and cached in
    the run folder. `sampler(controlnet, control_image)` makes the loop's sample_fn (drawing with the
    network as trained so far over the first image's control image). `hint_from` (a ControlNet for the
    same kind of control image, possibly of another base model) gives the hint block its start
    (new_controlnet)."""
    out = Path(out)
    check_trainable_family(model.spec, "ControlNet")
    check_control_kind(control)
    folder = controlnet_run_folder(out)
    dataset = CaptionedDataset(options.data, options.batch_size)
    controls = control_paths(dataset.examples, control, folder / CONTROL_CACHE, control_options, preprocess)
    if options.cache_latents:
        cache_latents(dataset, model.vae, folder / CACHE_FOLDER)
    objective = diffusion_objective(options, model, dataset, objective_class=ControlNetObjective)
    torch.manual_seed(options.seed)
    controlnet = new_controlnet(model.unet, model.spec.vae.downscale_factor, hint_from)
    objective.use_controlnet(controlnet, control or "given")
    train(
        train_config(options),
        objective,
        ControlledDataset(dataset, tuple(controls)),
        folder,
        resume=resume,
        device=device,
        sample_fn=sampler(controlnet, controls[0]) if sampler else None,
    )
    if is_main_process():
        write_controlnet_folder(controlnet, out, torch.float16 if fp16 else torch.float32)
    return out
