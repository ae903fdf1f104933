"""ControlNet in generation: loading, control images at each pass's size, and the residuals each model
call adds (Zhang et al. 2023), all inside the one sampling path.

```
ControlUnit(model, image, strength, start, end, mode, resize_mode)
  ─► resolve_units: model loaded (name/path → LoadedControlNet), image preprocessed
  ─► control_conditions(conditions, units)(width, height): ImageConditions + ControlHint per unit
       (image fitted to the pass's size, pixels in [0, 1])
  ─► Stage.denoiser ─► ControlApplier(hints, sigmas): per model call, the step of the call's sigma,
       Σ over acting units of scale_i · ControlNet(x, hint, t, cond)_i ─► Conditioning.control ─► UNet
```
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lienzo.devices import default_device, default_dtype
from lienzo.io.controlnet_files import check_controlnet_fits, legacy_model_hash, read_controlnet
from lienzo.io.library import ModelLibrary, library_from_config
from lienzo.models.controlnet import ControlNet, ControlNetConfig
from lienzo.models.t2i_adapter import T2IAdapter, T2IAdapterConfig
from lienzo.pipelines.control_apply import ControlHint
from lienzo.pipelines.control_units import ControlUnit, check_control_unit
from lienzo.pipelines.images import load_image
from lienzo.pipelines.options import GenerationOptions
from lienzo.pipelines.preprocessors import CANNY_HIGH, CANNY_LOW, SCRIBBLE_THRESHOLD, preprocess
from lienzo.pipelines.sampling import ConditionsAt, ImageConditions

PREPROCESS_DEFAULTS = {
    "canny": (("low_threshold", CANNY_LOW), ("high_threshold", CANNY_HIGH)),
    "scribble": (("threshold", SCRIBBLE_THRESHOLD),),
}
"""The thresholds a preprocessor uses when none is given, which the PNG records (A1111's Threshold A/B)."""
THRESHOLD_OPTIONS = ("low_threshold", "high_threshold", "threshold")


@dataclass(frozen=True, eq=False)
class LoadedControlNet:
    """A ControlNet (or T2I-Adapter) ready to run: the network, its name and A1111's short hash, the family
    its shapes name (None for unpublished sizes) and the layout its file was in."""

    model: ControlNet | T2IAdapter
    name: str
    short_hash: str | None = None
    family: str | None = None
    layout: str = "ldm"


def load_controlnet(
    path_or_name: str | Path,
    base=None,
    *,
    library: ModelLibrary | None = None,
    device=None,
    dtype=None,
) -> LoadedControlNet:
    """A ControlNet from a file, a diffusers folder or a name in the models folder's controlnet/; a
    T2I-Adapter file or folder is recognised from its keys or config and loads the same way.

    With `base` (a Pipeline) it is checked to fit that model, built on its device and dtype, and a
    difference file gets the model's UNet weights added; without one, its family comes from its shapes.
    """
    library = library or (base.model_library() if base is not None else library_from_config(allow_paths=True))
    path = library.resolve("controlnet", path_or_name)
    if base is not None:
        device, dtype = device or base.device, dtype or base.dtype
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    found = read_controlnet(
        path,
        base=None if base is None else base.spec,
        base_unet=None if base is None else unpatched_unet_weights(base),
    )
    with torch.device("meta"):
        model = (
            T2IAdapter(found.config)
            if isinstance(found.config, T2IAdapterConfig)
            else ControlNet(found.config)
        )
    model.load_state_dict(found.state_dict, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    short_hash = legacy_model_hash(path) if path.is_file() else None
    name = path.stem if path.is_file() else path.name
    return LoadedControlNet(model, name, short_hash, found.family, found.layout)


def control_config(model: ControlNet | T2IAdapter) -> ControlNetConfig | T2IAdapterConfig:
    """The config a loaded ControlNet or T2I-Adapter was built from."""
    return model.config if isinstance(model, T2IAdapter) else model.controlnet_config


def unpatched_unet_weights(pipe) -> dict[str, torch.Tensor]:
    """The Pipeline's UNet weights without its applied LoRAs (the base difference files and Control-LoRAs
    were made from)."""
    patcher = pipe.unet_patcher
    return {**patcher.model.state_dict(), **{name: weight.data for name, weight in patcher.originals.items()}}


def fit_control_image(image: Image.Image, width: int, height: int, resize_mode: str) -> Image.Image:
    """The control image at width x height by A1111's resize modes (see control_units.RESIZE_MODES)."""
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    if resize_mode == "just_resize":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    scale_x, scale_y = width / image.width, height / image.height
    scale = max(scale_x, scale_y) if resize_mode == "crop_and_resize" else min(scale_x, scale_y)
    new_width, new_height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resized = image.resize((new_width, new_height), Image.Resampling.LANCZOS)
    left, top = (new_width - width) // 2, (new_height - height) // 2
    if resize_mode == "crop_and_resize":
        return resized.crop((left, top, left + width, top + height))
    pixels = np.asarray(image)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    canvas = Image.new("RGB", (width, height), tuple(int(v) for v in np.median(edge, axis=0)))
    canvas.paste(resized, (-left, -top))
    return canvas


def crop_control_images(options: GenerationOptions, box: tuple[int, int, int, int], size: tuple[int, int]):
    """The options with each control image of the source's `size` cropped to `box` (inpainting's "only
    masked" region, as A1111 crops its control images); control images of other sizes stay whole."""
    units = tuple(
        replace(unit, image=unit.image.crop(box)) if unit.image.size == size else unit
        for unit in options.controlnets
    )
    return replace(options, controlnets=units)


def hint_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 control image in [0, 1] (diffusers' control image processing, no normalising)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous()


def control_conditions(
    conditions: ConditionsAt | None, units: tuple[ControlUnit, ...]
) -> ConditionsAt | None:
    """`conditions(width, height)` with each unit's ControlHint added (control images fitted to the size,
    cached per size); the units' models must be loaded and their images preprocessed (`resolve_units`)."""
    if not units:
        return conditions
    if any(not isinstance(unit.model, LoadedControlNet) for unit in units):
        raise ValueError("load the units' ControlNets first (Pipeline.resolve_controlnets)")

    @functools.cache
    def at(width: int, height: int) -> ImageConditions:
        extra = conditions(width, height) if conditions is not None else ImageConditions()
        hints = tuple(
            ControlHint(
                unit,
                unit.model.model,
                hint_tensor(fit_control_image(unit.image, width, height, unit.resize_mode)),
            )
            for unit in units
        )
        return replace(extra, control=hints)

    return at


def resolve_units(pipe, units) -> tuple[ControlUnit, ...]:
    """The units with their ControlNets loaded for `pipe` (names and paths resolved in its library, each
    file read once; loaded ones checked to fit) and their control images read and preprocessed."""
    loaded: dict[str, LoadedControlNet] = {}
    resolved = []
    for index, unit in enumerate(units):
        check_control_unit(unit, index)
        if unit.prepared:
            check_controlnet_fits(control_config(unit.model.model), pipe.spec, unit.model.name)
            resolved.append(unit)
            continue
        model = unit.model
        if isinstance(model, str | Path):
            if str(model) not in loaded:
                loaded[str(model)] = load_controlnet(model, pipe)
            model = loaded[str(model)]
        else:
            check_controlnet_fits(control_config(model.model), pipe.spec, model.name)
        options = {**dict(PREPROCESS_DEFAULTS.get(unit.preprocess, ())), **dict(unit.preprocess_options)}
        if unit.preprocess == "depth":
            options.setdefault("models_dir", pipe.model_library().root)
        image = preprocess(unit.preprocess, load_image(unit.image), **options)
        settings = tuple((key, value) for key, value in options.items() if key in THRESHOLD_OPTIONS)
        resolved.append(replace(unit, model=model, image=image, preprocess_options=settings, prepared=True))
    return tuple(resolved)
