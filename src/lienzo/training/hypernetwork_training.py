"""Training A1111 hypernetworks: new (k, v) networks per attention width, built as A1111 builds them, trained
through the latent diffusion loss with the model frozen, exported in A1111's file layout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lienzo.adapters import ModelPatcher
from lienzo.adapters.hypernetwork import (
    Hypernetwork,
    HypernetworkModule,
    activation_factory,
    attention_hooks,
    attention_widths,
)
from lienzo.errors import InvalidArgumentError
from lienzo.io.hypernetwork_writer import (
    HypernetworkSettings,
    hypernetwork_file_contents,
    write_hypernetwork_file,
)
from lienzo.io.model_hash import SHORT_HASH_DIGITS, model_identity
from lienzo.models.unet import UNetModel
from lienzo.training.batch import Batch
from lienzo.training.loop import SampleFn, train
from lienzo.training.method_run import (
    RunOptions,
    check_output_file,
    check_trainable_family,
    diffusion_objective,
    is_main_process,
    prepare_data,
    run_folder,
    train_config,
)
from lienzo.training.objective import LatentDiffusionObjective, Networks, ParamGroup, param_group
from lienzo.training.prior_preservation import ClassImages, with_prior

HOOK_KEY = "hypernet:training"


def _initialize(layer: nn.Module, method: str, activation: str, generator: torch.Generator) -> None:
    """A1111's weight initialization: LayerNorms and "Normal" Linear layers N(0, 0.01) weights and zero
    biases; Xavier and Kaiming (with the activation's gain where torch has one) for the others."""
    weight, bias = layer.weight.data, layer.bias.data
    if method == "Normal" or isinstance(layer, nn.LayerNorm):
        weight.normal_(0.0, 0.01, generator=generator)
        bias.zero_()
        return
    if method.startswith("Xavier"):
        sampler = nn.init.xavier_uniform_ if method == "XavierUniform" else nn.init.xavier_normal_
        sampler(weight, generator=generator)
    else:
        sampler = nn.init.kaiming_uniform_ if method == "KaimingUniform" else nn.init.kaiming_normal_
        nonlinearity = "leaky_relu" if activation.lower() == "leakyrelu" else "relu"
        sampler(weight, nonlinearity=nonlinearity, generator=generator)
    bias.zero_()


def new_hypernetwork_module(
    width: int, settings: HypernetworkSettings, generator: torch.Generator
) -> HypernetworkModule:
    """One k or v network in A1111's Sequential order: per layer a Linear, the activation (after the last
    Linear only with activate_output), a LayerNorm when asked, a Dropout where the dropout structure says."""
    factory = activation_factory(settings.activation)
    structure, dropout = settings.layer_structure, settings.dropout_structure
    last = len(structure) - 2
    active = settings.activation.lower() != "linear"
    layers: list[nn.Module] = []
    for index in range(len(structure) - 1):
        outputs = int(width * structure[index + 1])
        layers.append(nn.Linear(int(width * structure[index]), outputs))
        if active and (index < last or settings.activate_output):
            layers.append(factory())
        if settings.layer_norm:
            layers.append(nn.LayerNorm(outputs))
        if dropout[index + 1] > 0:
            layers.append(nn.Dropout(dropout[index + 1]))
    for layer in layers:
        if isinstance(layer, nn.Linear | nn.LayerNorm):
            _initialize(layer, settings.weight_initialization, settings.activation, generator)
    return HypernetworkModule(nn.Sequential(*layers))


def new_hypernetwork(widths: Sequence[int], settings: HypernetworkSettings, seed: int = 0) -> Hypernetwork:
    """Freshly initialized (k, v) networks for each width, in training mode with gradients on."""
    generator = torch.Generator().manual_seed(seed)
    layers = {
        width: (
            new_hypernetwork_module(width, settings, generator),
            new_hypernetwork_module(width, settings, generator),
        )
        for width in sorted(set(widths))
    }
    return Hypernetwork(layers).train().requires_grad_(True)


def layer_state_dicts(network: Hypernetwork) -> dict[int, tuple[dict, dict]]:
    """{width: (k state dict, v state dict)} with A1111's `linear.{i}.…` keys."""
    pairs = {}
    for width in network.widths:
        k, v = network.pair(width)
        pairs[width] = (k.state_dict(), v.state_dict())
    return pairs


def check_widths(unet: UNetModel, widths: Sequence[int] | None) -> tuple[int, ...]:
    """The widths to train: all the model's attention widths (A1111's default for SD 1.x: 768, 320, 640,
    1280), or the chosen ones, each checked to be a width the model's attention layers read."""
    available = attention_widths(unet)
    if not widths:
        return available
    unknown = sorted(set(widths) - set(available))
    if unknown:
        raise InvalidArgumentError(
            f"this model's attention layers read widths {', '.join(map(str, available))}, not "
            f"{', '.join(map(str, unknown))}; choose --widths among them or leave it out"
        )
    return tuple(sorted(set(widths)))


class HookedUNet(nn.Module):
    """The frozen UNet with the hypernetwork hooked into its attention layers (through the UNet's own
    patcher when it has one, e.g. a Pipeline's, so samples drawn while training see the hooks); only the
    hypernetwork is a registered submodule, so the optimizer, checkpoints and DDP see only its weights."""

    def __init__(self, unet: UNetModel, hypernetwork: Hypernetwork, patcher: ModelPatcher | None = None):
        super().__init__()
        self.hypernetwork = hypernetwork
        object.__setattr__(self, "frozen_unet", unet.requires_grad_(False))
        self.patcher = patcher or ModelPatcher(unet)
        self.patcher.add_hooks(HOOK_KEY, attention_hooks(unet, hypernetwork))

    @property
    def config(self) -> str:
        """What a resumed run must match: the hooked model's config and the networks' widths."""
        return f"{self.frozen_unet.config!r} hypernetwork widths {self.hypernetwork.widths}"

    def forward(self, *args, **kwargs):
        return self.frozen_unet(*args, **kwargs)

    def remove_hooks(self) -> None:
        """Take the hooks out: the UNet runs as it did before training."""
        self.patcher.remove(HOOK_KEY)


class HypernetworkObjective:
    """The latent diffusion loss (`LatentDiffusionObjective`) of the frozen model through trainable A1111
    hypernetworks (as A1111 trains them: the model's weights never change, only the k/v networks)."""

    def __init__(
        self,
        base: LatentDiffusionObjective,
        hypernetwork: Hypernetwork,
        settings: HypernetworkSettings,
        patcher: ModelPatcher | None = None,
    ):
        if "text_encoder" in base.trainable:
            raise InvalidArgumentError("a hypernetwork trains with the text encoder frozen")
        self.base = base
        self.settings = settings
        base.text_encoder.requires_grad_(False)
        self.hooked = HookedUNet(base.unet, hypernetwork, patcher)
        self.trainable: dict[str, nn.Module] = {"hypernetwork": self.hooked}

    def describe(self) -> dict:
        """The base objective's settings with the hypernetwork's instead of the trained modules."""
        return {**self.base.describe(), "trained": ["hypernetwork"], "settings": repr(self.settings)}

    def param_groups(self, learning_rate: float) -> list[ParamGroup]:
        return [param_group("hypernetwork", self.hooked, learning_rate)]

    def loss(self, batch: Batch, generator: torch.Generator, networks: Networks) -> torch.Tensor:
        return self.base.loss(batch, generator, {"unet": networks["hypernetwork"]})


def without_dropout(network: Hypernetwork, sample_fn: SampleFn) -> SampleFn:
    """`sample_fn` run with the networks in eval mode (no dropout), as a loaded file runs."""

    def sample(step: int, folder: Path) -> None:
        network.eval()
        try:
            sample_fn(step, folder)
        finally:
            network.train()

    return sample


@dataclass(frozen=True)
class HypernetworkConfig:
    """A hypernetwork run: the networks' settings and the widths to train (None: every attention width)."""

    settings: HypernetworkSettings = HypernetworkSettings()
    widths: tuple[int, ...] | None = None


def train_hypernetwork(
    options: RunOptions,
    config: HypernetworkConfig,
    model: Any,
    out: str | Path,
    *,
    classes: ClassImages | None = None,
    resume: bool = False,
    sample_fn: SampleFn | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """Train new hypernetworks over `model` (loaded in float32, frozen) on `options.data` and write them to
    `out` (.pt, A1111's layout, atomically); state, loss log and samples go to `run_folder(out)`. With
    `classes` their weighted loss is added (prior preservation)."""
    out = Path(out)
    check_trainable_family(model.spec, "hypernetwork")
    check_output_file(out, (".pt",))
    widths = check_widths(model.unet, config.widths)
    folder = run_folder(out)
    dataset = prepare_data(options, model, folder)
    base = diffusion_objective(options, model, dataset)
    unet_device = next(model.unet.parameters()).device
    network = new_hypernetwork(widths, config.settings, seed=options.seed).to(unet_device)
    objective = HypernetworkObjective(base, network, config.settings, getattr(model, "unet_patcher", None))
    items, loss = with_prior(options, model, dataset, objective, classes, folder)
    try:
        result = train(
            train_config(options),
            loss,
            items,
            folder,
            resume=resume,
            device=device,
            sample_fn=sample_fn and without_dropout(network, sample_fn),
        )
    finally:
        objective.hooked.remove_hooks()
    if is_main_process():
        path = getattr(model, "path", None)
        contents = hypernetwork_file_contents(
            layer_state_dicts(network),
            config.settings,
            name=out.stem,
            step=result.step,
            sd_checkpoint=model_identity(path)[:SHORT_HASH_DIGITS] if path else None,
            sd_checkpoint_name=Path(path).stem if path else None,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        write_hypernetwork_file(out, contents)
    return out
