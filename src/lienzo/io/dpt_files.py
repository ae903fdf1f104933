"""transformers `DPTForDepthEstimation` folders (config.json + model.safetensors or pytorch_model.bin) and
where lienzo finds one: a diffusers depth model's `depth_estimator/` + `feature_extractor/`, or the
models root's `depth/` folder."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from lienzo.errors import CorruptCheckpointError, ModelNotFoundError, UnknownArchitectureError
from lienzo.io.detect import read_json
from lienzo.io.formats import read_state_dict
from lienzo.io.image_processor_files import PROCESSOR_CONFIG, DPTProcessorSettings, read_dpt_processor
from lienzo.models.bit import BiTConfig
from lienzo.models.dpt import DPTConfig, DPTDepthEstimator

TRANSFORMERS_WEIGHT_FILES = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin")
UNUSED_PREFIXES = ("dpt.layernorm.", "dpt.pooler.")
"""Weights transformers keeps that the depth head never reads (the final norm and the pooler)."""
DEPTH_FOLDER = "depth"
"""The models root's folder for a transformers DPT depth estimator (config, weights and processor)."""
DEPTH_WEIGHTS_HINT = (
    "get the depth estimator of a diffusers SD 2 depth model (stabilityai/stable-diffusion-2-depth: its "
    "depth_estimator/ folder with config.json and model.safetensors, and feature_extractor/ with "
    "preprocessor_config.json) and put both folders in the depth model's folder, or put a transformers DPT "
    "folder (Intel/dpt-hybrid-midas: config.json, model.safetensors, preprocessor_config.json) in {depth}"
)


def dpt_config_from_transformers(config: dict, source: str = "config.json") -> DPTConfig:
    """A DPTConfig from transformers' DPT config.json; fields it leaves out take transformers' defaults."""
    if config.get("model_type", "dpt") != "dpt":
        raise UnknownArchitectureError(f"{source} describes a {config['model_type']!r} model, not DPT")
    hybrid = bool(config.get("is_hybrid", False))
    if config.get("backbone_config") is not None and not hybrid:
        kind = config["backbone_config"].get("model_type", "another backbone")
        raise UnknownArchitectureError(
            f"{source} is a DPT on a {kind} backbone (e.g. Depth Anything), which lienzo does not build; "
            "use DPT-Hybrid or DPT-Large weights (Intel/dpt-hybrid-midas, Intel/dpt-large)"
        )
    names = {field.name for field in fields(DPTConfig)} - {"backbone", "image_size", "neck_ignore_stages"}
    values = {name: config[name] for name in names if config.get(name) is not None}
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    size = config.get("image_size", 384)
    values["image_size"] = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if hybrid:
        values["backbone"] = _bit_config(config.get("backbone_config") or {}, source)
        values["neck_ignore_stages"] = tuple(config.get("neck_ignore_stages", (0, 1)))
    return DPTConfig(**values)


def _bit_config(config: dict, source: str) -> BiTConfig:
    """DPT-Hybrid's BiT stem config, with the defaults transformers gives a hybrid DPT."""
    layer_type = config.get("layer_type", "bottleneck")
    padding = str(config.get("global_padding", "same")).upper()
    act = config.get("hidden_act", "relu")
    depths = tuple(config.get("depths", (3, 4, 9)))
    if layer_type != "bottleneck" or padding != "SAME" or act != "relu" or len(depths) != 3:
        raise UnknownArchitectureError(
            f"{source} has a BiT stem lienzo does not build (layer_type {layer_type}, padding {padding}, "
            f"activation {act}, {len(depths)} stages); DPT-Hybrid's is a 3-stage ReLU bottleneck, SAME padded"
        )
    hidden_sizes = tuple(config.get("hidden_sizes", (256, 512, 1024, 2048)))[: len(depths)]
    return BiTConfig(
        num_channels=int(config.get("num_channels", 3)),
        embedding_size=int(config.get("embedding_size", 64)),
        hidden_sizes=hidden_sizes,
        depths=depths,
        num_groups=int(config.get("num_groups", 32)),
        width_factor=int(config.get("width_factor", 1)),
        output_stride=int(config.get("output_stride", 32)),
        embedding_dynamic_padding=bool(config.get("embedding_dynamic_padding", True)),
    )


def weight_file(folder: Path) -> Path | None:
    """The folder's transformers weight file (safetensors first), or None."""
    return next((folder / name for name in TRANSFORMERS_WEIGHT_FILES if (folder / name).is_file()), None)


def read_depth_estimator(folder: Path) -> DPTDepthEstimator:
    """The DPT depth estimator in a transformers folder, on the CPU in float32, eval mode."""
    folder = Path(folder)
    config = dpt_config_from_transformers(read_json(folder / "config.json"), str(folder / "config.json"))
    path = weight_file(folder)
    if path is None:
        raise ModelNotFoundError(
            f"{folder} has no weights (one of {', '.join(TRANSFORMERS_WEIGHT_FILES)}); "
            + DEPTH_WEIGHTS_HINT.format(depth=f"models/{DEPTH_FOLDER}/")
        )
    weights = {
        key: value for key, value in read_state_dict(path).items() if not key.startswith(UNUSED_PREFIXES)
    }
    with torch.device("meta"):
        model = DPTDepthEstimator(config)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()[:160]
        raise CorruptCheckpointError(
            f"{path} does not fit its config.json ({first}); re-download the depth estimator"
        ) from None
    if missing or unexpected:
        raise CorruptCheckpointError(
            f"{path} does not fit its config.json (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "re-download the depth estimator"
        )
    return model.float().eval().requires_grad_(False)


def locate_depth_estimator(model_folder: Path | None, models_root: Path) -> tuple[Path, Path]:
    """(weights folder, processor folder): the model folder's depth_estimator/ and feature_extractor/ when
    it has them, else `models_root/depth/`; a ModelNotFoundError naming the files to get otherwise."""
    depth = Path(models_root) / DEPTH_FOLDER
    if model_folder is not None and (Path(model_folder) / "depth_estimator" / "config.json").is_file():
        folder = Path(model_folder)
        return folder / "depth_estimator", folder / "feature_extractor"
    if (depth / "config.json").is_file():
        return depth, depth
    where = f"{depth}/" if model_folder is None else f"{depth}/ (nor in {model_folder}/depth_estimator/)"
    raise ModelNotFoundError(
        f"no depth estimator found in {where}; lienzo ships none: "
        + DEPTH_WEIGHTS_HINT.format(depth=f"{depth}/")
    )


def read_depth_processor(folder: Path) -> DPTProcessorSettings:
    """The DPT image processor settings; a missing file is named with what to get."""
    if not (Path(folder) / PROCESSOR_CONFIG).is_file():
        raise ModelNotFoundError(
            f"{Path(folder) / PROCESSOR_CONFIG} is missing; the depth estimator needs its image processor "
            "settings: " + DEPTH_WEIGHTS_HINT.format(depth=f"models/{DEPTH_FOLDER}/")
        )
    return read_dpt_processor(folder)
