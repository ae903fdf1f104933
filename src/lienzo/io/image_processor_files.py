"""transformers image processor settings (`preprocessor_config.json`) of DPT and CLIP, read as frozen data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lienzo.errors import CorruptCheckpointError
from lienzo.io.detect import read_json

PROCESSOR_CONFIG = "preprocessor_config.json"
BICUBIC = 3
"""PIL's resampling code for bicubic, the default of both processors."""
STANDARD_MEAN = (0.5, 0.5, 0.5)
STANDARD_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class DPTProcessorSettings:
    """transformers' `DPTImageProcessor`: resize to `size` (optionally keeping the aspect ratio, to a
    multiple), rescale to [0, 1], normalise; defaults are transformers' own."""

    size: tuple[int, int] = (384, 384)
    keep_aspect_ratio: bool = False
    ensure_multiple_of: int = 1
    resample: int = BICUBIC
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = STANDARD_MEAN
    image_std: tuple[float, ...] = STANDARD_STD


@dataclass(frozen=True)
class CLIPProcessorSettings:
    """transformers' `CLIPImageProcessor`: resize the shortest edge, centre crop, rescale, normalise."""

    shortest_edge: int = 224
    crop_size: tuple[int, int] = (224, 224)
    resample: int = BICUBIC
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD


def read_dpt_processor(folder: Path) -> DPTProcessorSettings:
    """The DPT image processor settings in `folder/preprocessor_config.json`."""
    path = Path(folder) / PROCESSOR_CONFIG
    values = read_json(path)
    default = DPTProcessorSettings()
    return DPTProcessorSettings(
        size=_height_width(values.get("size", default.size), path),
        keep_aspect_ratio=bool(values.get("keep_aspect_ratio", default.keep_aspect_ratio)),
        ensure_multiple_of=int(values.get("ensure_multiple_of", default.ensure_multiple_of)),
        resample=int(values.get("resample", default.resample)),
        do_resize=bool(values.get("do_resize", default.do_resize)),
        do_rescale=bool(values.get("do_rescale", default.do_rescale)),
        rescale_factor=float(values.get("rescale_factor", default.rescale_factor)),
        do_normalize=bool(values.get("do_normalize", default.do_normalize)),
        image_mean=_triple(values.get("image_mean", default.image_mean)),
        image_std=_triple(values.get("image_std", default.image_std)),
    )


def read_clip_processor(folder: Path) -> CLIPProcessorSettings:
    """The CLIP image processor settings in `folder/preprocessor_config.json`."""
    path = Path(folder) / PROCESSOR_CONFIG
    values = read_json(path)
    default = CLIPProcessorSettings()
    size = values.get("size", default.shortest_edge)
    if isinstance(size, dict):
        if "shortest_edge" not in size:
            raise CorruptCheckpointError(f"{path}: a CLIP processor's size needs shortest_edge, got {size}")
        size = size["shortest_edge"]
    return CLIPProcessorSettings(
        shortest_edge=int(size),
        crop_size=_height_width(values.get("crop_size", default.crop_size), path),
        resample=int(values.get("resample", default.resample)),
        do_resize=bool(values.get("do_resize", default.do_resize)),
        do_center_crop=bool(values.get("do_center_crop", default.do_center_crop)),
        do_rescale=bool(values.get("do_rescale", default.do_rescale)),
        rescale_factor=float(values.get("rescale_factor", default.rescale_factor)),
        do_normalize=bool(values.get("do_normalize", default.do_normalize)),
        image_mean=_triple(values.get("image_mean", default.image_mean)),
        image_std=_triple(values.get("image_std", default.image_std)),
    )


def _height_width(value, path: Path) -> tuple[int, int]:
    """(height, width) from 384, [384, 384] or {"height": 384, "width": 384}."""
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise CorruptCheckpointError(f"{path}: cannot read the image size {value!r}; expected height and width")


def _triple(value) -> tuple[float, ...]:
    """Per-channel statistics as a tuple (a single number applies to every channel)."""
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),) * 3
