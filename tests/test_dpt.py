"""DPT depth estimator against transformers' DPTForDepthEstimation and DPTImageProcessor on tiny random
weights; depth2img estimating its own map; the missing-weights message."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import lienzo
from lienzo.errors import ModelNotFoundError, UnknownArchitectureError
from lienzo.io.dpt_files import dpt_config_from_transformers, read_depth_estimator, read_depth_processor
from lienzo.pipelines.depth_estimation import estimate_depth, load_depth_estimator
from lienzo.pipelines.preprocessors import preprocess
from lienzo.pipelines.vision_inputs import dpt_pixels
from tiny_models import tiny_pipeline_folder

TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 64,
    "patch_size": 16,
    "backbone_out_indices": [0, 1, 2, 3],
    "fusion_hidden_size": 16,
}
PLAIN = {**TINY_VIT, "neck_hidden_sizes": [8, 16, 32, 32], "use_batch_norm_in_fusion_residual": True}
ADD_READOUT = {
    **TINY_VIT,
    "neck_hidden_sizes": [8, 16, 32, 32],
    "readout_type": "add",
    "add_projection": False,
}
HYBRID = {
    **TINY_VIT,
    "is_hybrid": True,
    "neck_hidden_sizes": [16, 32, 32, 32],
    "reassemble_factors": [1, 1, 1, 0.5],
    "backbone_featmap_shape": [1, 64, 4, 4],
    "backbone_config": {
        "model_type": "bit",
        "embedding_size": 8,
        "hidden_sizes": [16, 32, 64],
        "depths": [1, 2, 1],
        "num_groups": 4,
        "layer_type": "bottleneck",
        "global_padding": "same",
        "out_features": ["stage1", "stage2", "stage3"],
        "embedding_dynamic_padding": True,
    },
}
PROCESSOR = {"size": {"height": 64, "width": 64}, "keep_aspect_ratio": False, "image_mean": [0.5] * 3}


def save_reference(folder, config: dict, size: int = 64) -> transformers.DPTForDepthEstimation:
    """A transformers DPT with every weight (and batch-norm statistic) drawn at random, saved in `folder`;
    the last bias is shifted so the final ReLU passes about half of a `size`-pixel input's depth map."""
    model = transformers.DPTForDepthEstimation(transformers.DPTConfig(**config)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
        last = model.head.head[4]
        seen = []
        handle = last.register_forward_hook(lambda module, inputs, output: seen.append(output))
        model(torch.randn(1, 3, size, size, generator=generator))
        handle.remove()
        last.bias -= seen[0].median()
    model.save_pretrained(folder)
    return model


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize(
    ("config", "sizes"),
    [(PLAIN, (64, 96)), (ADD_READOUT, (80,)), (HYBRID, (64,))],
    ids=["vit", "vit-add", "hybrid"],
)
def test_dpt_matches_transformers(tmp_path, config, sizes):
    reference = save_reference(tmp_path, config, sizes[-1])
    ours = read_depth_estimator(tmp_path)
    for size in sizes:
        pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            expected = reference(pixels).predicted_depth
            got = ours(pixels)
        assert got.shape == expected.shape and got.shape[0] == 2
        assert (expected > 0).float().mean() > 0.2, "the random head must not be mostly clipped to zero"
        assert relative_error(got, expected) < 1e-5


def test_dpt_processor_matches_transformers(tmp_path):
    settings = {"size": {"height": 48, "width": 64}, "keep_aspect_ratio": True, "ensure_multiple_of": 32}
    processor = transformers.DPTImageProcessor(
        **settings, image_mean=[0.3, 0.4, 0.5], image_std=[0.2, 0.3, 0.25]
    )
    processor.save_pretrained(tmp_path)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    expected = processor(images=photo, return_tensors="pt").pixel_values
    ours = dpt_pixels(photo, read_depth_processor(tmp_path))
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max() < 1e-5


def test_configs_lienzo_cannot_build_are_refused():
    with pytest.raises(UnknownArchitectureError, match="backbone"):
        dpt_config_from_transformers({"backbone_config": {"model_type": "dinov2"}})
    with pytest.raises(UnknownArchitectureError, match="BiT stem"):
        dpt_config_from_transformers({"is_hybrid": True, "backbone_config": {"layer_type": "preactivation"}})


@pytest.fixture(scope="module")
def depth_model_folder(tmp_path_factory):
    """The tiny SD 2 depth folder plus a tiny hybrid DPT as depth_estimator/ and its feature_extractor/."""
    folder = tmp_path_factory.mktemp("depth-model") / "sd2-depth"
    shutil.copytree(tiny_pipeline_folder("sd2-depth"), folder)
    save_reference(folder / "depth_estimator", HYBRID)
    transformers.DPTImageProcessor(**PROCESSOR).save_pretrained(folder / "feature_extractor")
    return folder


def test_depth2img_estimates_the_map_as_diffusers_feeds_it(depth_model_folder):
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    reference = transformers.DPTForDepthEstimation.from_pretrained(
        depth_model_folder / "depth_estimator"
    ).eval()
    processor = transformers.DPTImageProcessor.from_pretrained(depth_model_folder / "feature_extractor")
    with torch.no_grad():
        expected = reference(processor(images=photo, return_tensors="pt").pixel_values).predicted_depth[0]
    estimator = load_depth_estimator(depth_model_folder, depth_model_folder / "no-models-root")
    assert relative_error(estimate_depth(photo, estimator), expected) < 1e-5
    pipe = lienzo.load(depth_model_folder, device="cpu", dtype=torch.float32)
    settings = {"steps": 3, "seed": 5, "sampler": "euler", "cfg": 4.0}
    estimated = pipe.depth2img(photo, None, "a room", **settings)[0]
    given = pipe.depth2img(photo, expected, "a room", **settings)[0]
    assert np.abs(np.asarray(estimated, dtype=int) - np.asarray(given, dtype=int)).max() <= 1


def test_depth_preprocessor_reads_models_depth_folder(tmp_path):
    save_reference(tmp_path / "depth", HYBRID)
    transformers.DPTImageProcessor(**PROCESSOR).save_pretrained(tmp_path / "depth")
    photo = Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    control = preprocess("depth", photo, models_dir=tmp_path)
    values = np.asarray(control)
    assert control.size == photo.size and control.mode == "RGB"
    assert values.min() == 0 and values.max() == 255
    assert (values[..., 0] == values[..., 2]).all()


def test_missing_depth_weights_name_the_files_and_where_they_go(tmp_path):
    photo = Image.new("RGB", (32, 32))
    with pytest.raises(ModelNotFoundError) as caught:
        preprocess("depth", photo, models_dir=tmp_path / "models")
    message = str(caught.value)
    assert f"{tmp_path / 'models' / 'depth'}/" in message
    assert "model.safetensors" in message and "preprocessor_config.json" in message
    assert "dpt-hybrid-midas" in message
    pipe = lienzo.load(tiny_pipeline_folder("sd2-depth"), device="cpu", dtype=torch.float32)
    pipe.library = lienzo.io.library.ModelLibrary(root=tmp_path / "models")
    with pytest.raises(ModelNotFoundError, match="depth_estimator"):
        pipe.depth2img(photo, None, "a room", steps=2)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    command = [sys.executable, "-m", "lienzo.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)


def test_depth2img_command_estimates_or_names_the_missing_weights(depth_model_folder, tmp_path):
    source = tmp_path / "room.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(source)
    common = [
        "--steps",
        "2",
        "--seed",
        "1",
        "--device",
        "cpu",
        "-q",
        "--models-dir",
        str(tmp_path / "models"),
    ]
    done = run_cli(
        "depth2img",
        str(source),
        "a room",
        "--model",
        str(depth_model_folder),
        *common,
        "-o",
        str(tmp_path / "a"),
    )
    assert done.returncode == 0, done.stderr
    (written,) = (tmp_path / "a").glob("*.png")
    with Image.open(written) as image:
        assert image.size == (32, 32)
    bare = run_cli(
        "depth2img",
        str(source),
        "a room",
        "--model",
        str(tiny_pipeline_folder("sd2-depth")),
        *common,
        "-o",
        str(tmp_path / "b"),
    )
    assert bare.returncode == 1 and bare.stderr.startswith("error: ") and "Traceback" not in bare.stderr
    assert f"{tmp_path / 'models' / 'depth'}/" in bare.stderr and "depth_estimator" in bare.stderr
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
