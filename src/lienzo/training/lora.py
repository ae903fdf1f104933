"""LoRA / LyCORIS training (`lienzo train lora`): adapter networks over the frozen UNet (and text encoder)
trained with the latent diffusion loss, saved in kohya's key layout with kohya's `ss_*` header, so A1111,
ComfyUI, kohya's scripts, diffusers and lienzo's own `<lora:name:w>` read the file."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from lienzo.io.adapter_keys import diffusers_unet_names, text_prefixes, underscored
from lienzo.io.formats import write_safetensors
from lienzo.io.library import BUILTIN_NAME
from lienzo.models.specs import FamilySpec
from lienzo.training.captioned_dataset import CaptionedDataset
from lienzo.training.loop import train
from lienzo.training.lora_network import AdapterNetwork, NetworkConfig, text_network, unet_network
from lienzo.training.method_run import (
    RunOptions,
    check_trainable_family,
    diffusion_objective,
    is_main_process,
    prepare_data,
    run_folder,
    train_config,
)
from lienzo.training.objective import LatentDiffusionObjective
from lienzo.training.prior_preservation import ClassImages, PriorPreservationDataset, with_prior

UNET_PREFIX = "lora_unet_"
BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sd2-v": "sd_v2_v", "sdxl": "sdxl_base_v1-0"}


class NetworkObjective(LatentDiffusionObjective):
    """The latent diffusion loss with only adapter networks trained: "unet" and, when given, "text_encoder"
    (each an AdapterNetwork that runs its base network), at their own learning rates."""

    def use_networks(self, networks: dict[str, AdapterNetwork], rates: dict[str, float | None]) -> None:
        """Train these networks (the base networks stay frozen) at these rates (None: the config's)."""
        self.trainable = dict(networks)
        self.learning_rates = {name: rates.get(name) for name in networks}

    def describe(self) -> dict:
        """The base objective's settings and the adapters' algorithm, rank and alpha."""
        return super().describe() | {"networks": {n: repr(m.config) for n, m in self.trainable.items()}}


def module_key(spec: FamilySpec, component: str, name: str, unet_names: dict[str, str]) -> str:
    """kohya's module key: `lora_unet_` + the diffusers path (SD 1.x/2.x) or the ldm path (SDXL), or
    the first text tower's prefix (`lora_te_`) + the transformers path, dots as underscores."""
    if component == "unet":
        path = name if spec.vector_conditioning is not None else unet_names.get(name, name)
        return UNET_PREFIX + underscored(path)
    return text_prefixes(spec)[0].kohya[0] + underscored(name)


def adapter_state_dict(networks: dict[str, AdapterNetwork], spec: FamilySpec) -> dict[str, torch.Tensor]:
    """Every adapter part under a kohya key (`<module key>.lora_down.weight`, `.alpha`, `.hada_w1_a`)."""
    state: dict[str, torch.Tensor] = {}
    for component, network in networks.items():
        layers = network.named_adapters()
        unet_names = diffusers_unet_names(spec.unet, list(layers)) if component == "unet" else {}
        for name, adapter in layers.items():
            key = module_key(spec, component, name, unet_names)
            for part, tensor in adapter.parts().items():
                state[f"{key}.{part}"] = tensor.detach().float().cpu().clone()
    return state


def kohya_metadata(
    options: RunOptions,
    config: NetworkConfig,
    spec: FamilySpec,
    dataset: CaptionedDataset,
    *,
    output_name: str,
    started: float,
    steps: int,
    classes: CaptionedDataset | None = None,
    prior_loss_weight: float = 1.0,
) -> dict[str, str]:
    """kohya sd-scripts' training metadata (train_network.py's `ss_*` keys), as strings; `classes` are the
    class images of prior preservation (kohya's regularisation images)."""
    text_trained = bool(options.text_encoder_lr)
    network_args = (
        {} if config.network == "lora" else {"algo": "lora" if config.network == "dora" else config.network}
    )
    if config.network == "dora":
        network_args["dora_wd"] = "True"
    if config.covers_convs:
        network_args |= {"conv_dim": str(config.rank), "conv_alpha": str(config.scale_alpha)}
    folders = {}
    for example in dataset.examples:
        entry = folders.setdefault(example.path.parent.name, {"n_repeats": example.repeats, "img_count": 0})
        entry["img_count"] += 1
    data = options.data
    values = {
        "ss_session_id": str(uuid.uuid4().int % 2**32),
        "ss_training_started_at": str(started),
        "ss_training_finished_at": str(time.time()),
        "ss_output_name": output_name,
        "ss_learning_rate": str(options.learning_rate),
        "ss_unet_lr": str(options.unet_lr if options.unet_lr is not None else options.learning_rate),
        "ss_text_encoder_lr": str(options.text_encoder_lr or 0.0),
        "ss_num_train_images": str(sum(example.repeats for example in dataset.examples)),
        "ss_num_reg_images": str(len(classes.examples) if classes is not None else 0),
        "ss_num_batches_per_epoch": str(dataset.batches_per_epoch),
        "ss_num_epochs": str(-(-steps // dataset.batches_per_epoch)),
        "ss_epoch": str(-(-steps // dataset.batches_per_epoch)),
        "ss_steps": str(steps),
        "ss_max_train_steps": str(options.steps),
        "ss_batch_size_per_device": str(options.batch_size),
        "ss_gradient_checkpointing": str(options.gradient_checkpointing),
        "ss_gradient_accumulation_steps": "1",
        "ss_lr_warmup_steps": "0",
        "ss_lr_scheduler": "constant",
        "ss_optimizer": "torch.optim.adamw.AdamW",
        "ss_network_module": "networks.lora" if config.network == "lora" else "lycoris.kohya",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.scale_alpha),
        "ss_network_dropout": "None",
        "ss_network_args": json.dumps(network_args) if network_args else "null",
        "ss_network_train_unet_only": str(not text_trained),
        "ss_network_train_text_encoder_only": "False",
        "ss_mixed_precision": options.mixed_precision,
        "ss_full_fp16": "False",
        "ss_v2": str(spec.name.startswith("sd2")),
        "ss_v_parameterization": str(spec.prediction == "v"),
        "ss_base_model_version": BASE_MODEL_VERSIONS.get(spec.name, spec.name),
        "ss_clip_skip": "None",
        "ss_max_token_length": "None",
        "ss_cache_latents": str(options.cache_latents),
        "ss_seed": str(options.seed),
        "ss_noise_offset": "None",
        "ss_min_snr_gamma": "None",
        "ss_max_grad_norm": "1.0",
        "ss_caption_dropout_rate": str(options.caption_dropout),
        "ss_caption_dropout_every_n_epochs": "0",
        "ss_caption_tag_dropout_rate": "0.0",
        "ss_shuffle_caption": str(data.shuffle_tags),
        "ss_keep_tokens": str(data.keep_tokens),
        "ss_resolution": f"({data.resolution}, {data.resolution})",
        "ss_enable_bucket": str(data.buckets),
        "ss_bucket_no_upscale": "False",
        "ss_bucket_info": json.dumps({"buckets": dataset.bucket_counts()}),
        "ss_dataset_dirs": json.dumps(folders),
        "ss_tag_frequency": json.dumps(dataset.tag_frequency()),
        "ss_prior_loss_weight": str(prior_loss_weight),
        "ss_sd_model_name": str(options.model or BUILTIN_NAME),
        "ss_training_comment": "trained with lienzo",
    }
    return values


def train_lora(
    options: RunOptions,
    config: NetworkConfig,
    model,
    out: str | Path,
    *,
    classes: ClassImages | None = None,
    resume: bool = False,
    sample_fn: Callable[[int, Path], None] | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """Train a LoRA/LyCORIS network on `options.data` over `model` (a loaded model, float32, frozen) and
    write it to `out` (.safetensors, kohya layout); state, loss log and samples go to `run_folder(out)`.

    The text encoder gets adapters too when `options.text_encoder_lr` is above 0. With `classes` their
    weighted loss is added (prior preservation: kohya's regularisation images).
    """
    out = Path(out)
    check_trainable_family(model.spec, "LoRA")
    folder = run_folder(out)
    dataset = prepare_data(options, model, folder)
    train_text = bool(options.text_encoder_lr)
    objective = diffusion_objective(
        options, model, dataset, objective_class=NetworkObjective, checkpoint_text=train_text
    )
    torch.manual_seed(options.seed)
    networks = {"unet": unet_network(model.unet, config)}
    if train_text:
        networks["text_encoder"] = text_network(model.text_encoders[0], config)
    objective.use_networks(networks, {"unet": options.unet_lr, "text_encoder": options.text_encoder_lr})
    items, loss = with_prior(options, model, dataset, objective, classes, folder)
    started = time.time()
    result = train(
        train_config(options), loss, items, folder, resume=resume, device=device, sample_fn=sample_fn
    )
    if is_main_process():
        metadata = kohya_metadata(
            options,
            config,
            model.spec,
            dataset,
            output_name=out.stem,
            started=started,
            steps=result.step,
            classes=items.classes if isinstance(items, PriorPreservationDataset) else None,
            prior_loss_weight=classes.weight if classes is not None else 1.0,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(out, adapter_state_dict(networks, model.spec), metadata)
    return out
