"""The safety checker against diffusers' StableDiffusionSafetyChecker and CLIPImageProcessor on tiny random
weights; flagged images blacked out with a warning and a record, auto/on/off, the CLI flag."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import diffusers
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance
from PIL import Image

import lienzo
from lienzo.errors import InvalidArgumentError, ModelNotFoundError
from lienzo.io.safety_checker_files import read_safety_checker
from lienzo.models.safety_checker import score_image
from lienzo.pipelines.metadata import read_parameters, save_png
from lienzo.pipelines.safety import NSFWContentWarning, was_flagged
from lienzo.pipelines.vision_inputs import clip_pixels
from lienzo.server.a1111_request import read_request
from lienzo.server.a1111_service import draw
from lienzo.server.config import ServerConfig
from tiny_models import tiny_pipeline_folder

VISION = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_CLIP = {"vision_config": {**VISION, "image_size": 32, "patch_size": 8}, "projection_dim": 16}
PROCESSOR = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}


def photos(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 52, 3), dtype=np.uint8)) for i in range(count)]


def save_checker(
    folder, images: list[Image.Image]
) -> diffusers.pipelines.stable_diffusion.StableDiffusionSafetyChecker:
    """A random tiny diffusers checker saved with its feature extractor; over `images`, about half match each
    special-care concept, the upper half match concept 0 (even after the special-care adjustment), none
    the other concepts."""
    checker = diffusers.pipelines.stable_diffusion.StableDiffusionSafetyChecker(
        transformers.CLIPConfig(**TINY_CLIP)
    ).eval()
    generator = torch.Generator().manual_seed(3)
    processor = transformers.CLIPImageProcessor(**PROCESSOR)
    pixels = processor(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        for parameter in checker.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        embeds = checker.visual_projection(checker.vision_model(pixels)[1])
        normal = torch.nn.functional.normalize
        concepts = normal(embeds) @ normal(checker.concept_embeds).T
        thresholds = concepts.max(dim=0).values + 0.05
        thresholds[0] = concepts[:, 0].median() + 0.015
        checker.concept_embeds_weights.copy_(thresholds)
        special = normal(embeds) @ normal(checker.special_care_embeds).T
        checker.special_care_embeds_weights.copy_(special.median(dim=0).values + 0.002)
    checker.save_pretrained(folder / "safety_checker")
    processor.save_pretrained(folder / "feature_extractor")
    return checker


def as_released_layout(folder) -> None:
    """Rewrite the weights under the released SD checkpoints' keys (`vision_model.vision_model.*`,
    with the position_ids buffer older transformers saved)."""
    path = folder / "safety_checker" / "model.safetensors"
    weights = safetensors.torch.load_file(path)
    released = {
        ("vision_model." + key if key.startswith("vision_model.") else key): value
        for key, value in weights.items()
    }
    released["vision_model.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    path.unlink()
    safetensors.torch.save_file(released, folder / "safety_checker" / "model.safetensors")


@pytest.mark.parametrize("layout", ["transformers-5", "released"])
def test_checker_matches_diffusers(tmp_path, layout):
    images = photos(6)
    reference = save_checker(tmp_path, images)
    if layout == "released":
        as_released_layout(tmp_path)
    processor = transformers.CLIPImageProcessor.from_pretrained(tmp_path / "feature_extractor")
    expected_pixels = processor(images=images, return_tensors="pt").pixel_values
    model, settings = read_safety_checker(tmp_path)
    pixels = clip_pixels(images, settings)
    assert (pixels - expected_pixels).abs().max() < 1e-5
    arrays = [np.asarray(image, dtype=np.float32) / 255 for image in images]
    _, expected_flags = reference(clip_input=expected_pixels, images=arrays)
    verdicts = model(pixels)
    assert [verdict.flagged for verdict in verdicts] == expected_flags
    assert 0 < sum(expected_flags) < len(images)
    with torch.no_grad():
        embeds = reference.visual_projection(reference.vision_model(expected_pixels)[1])
        expected_concepts = cosine_distance(embeds, reference.concept_embeds)
        expected_special = cosine_distance(embeds, reference.special_care_embeds)
    concepts, special = model.similarities(pixels)
    assert (concepts - expected_concepts).abs().max() < 1e-5
    assert (special - expected_special).abs().max() < 1e-5


def test_special_care_matches_raise_later_scores_and_scores_round_to_three_decimals():
    concepts, thresholds = np.float32([0.195]), np.float32([0.2])
    plain = score_image(concepts, np.float32([0.1, 0.1]), thresholds, np.float32([0.25, 0.2]))
    assert not plain.flagged and plain.concept_scores == pytest.approx((-0.005,))
    raised = score_image(concepts, np.float32([0.3, 0.1]), thresholds, np.float32([0.25, 0.2]))
    assert raised.flagged and raised.concept_scores == pytest.approx((0.005,))
    assert raised.special_scores == pytest.approx((0.05, -0.09))
    assert not score_image(np.float32([0.2004]), np.float32([0.0]), thresholds, np.float32([0.5])).flagged


def folder_with_checker(tmp_path, threshold: float):
    """The tiny SD 1 folder plus a tiny checker whose every concept threshold is `threshold` (-2: every
    image is flagged, 2: none), listed in model_index.json as diffusers lists it."""
    folder = tmp_path / "sd1-checked"
    shutil.copytree(tiny_pipeline_folder("sd1"), folder)
    checker = save_checker(folder, photos(2))
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(2.0)
    checker.save_pretrained(folder / "safety_checker")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"])
    index.update(feature_extractor=["transformers", "CLIPImageProcessor"])
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


FAST = {"steps": 2, "seed": 3, "sampler": "euler", "width": 32, "height": 32}


def test_flagged_images_are_blacked_out_with_a_warning_and_a_record(tmp_path):
    pipe = lienzo.load(folder_with_checker(tmp_path, -2.0), device="cpu", dtype=torch.float32)
    with pytest.warns(NSFWContentWarning, match="flagged 2 of 2"):
        images = pipe.generate("a red circle", batch_size=2, **FAST)
    assert all(np.asarray(image).max() == 0 for image in images)
    assert all(was_flagged(image) for image in images)
    path = save_png(images[0], tmp_path / "flagged.png", images[0].info["lienzo"])
    assert "Safety checker: flagged NSFW (blacked out)" in read_parameters(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NSFWContentWarning)
        (kept,) = pipe.generate("a red circle", safety_checker="off", **FAST)
    assert np.asarray(kept).max() > 0 and kept.info["lienzo"]["safety_checker"] is None


def test_auto_follows_the_folder_and_on_needs_a_checker(tmp_path):
    passing = lienzo.load(folder_with_checker(tmp_path, 2.0), device="cpu", dtype=torch.float32)
    (image,) = passing.img2img(Image.new("RGB", (32, 32), "white"), "a red circle", **FAST)
    assert image.info["lienzo"]["safety_checker"] == "passed" and np.asarray(image).max() > 0
    plain = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    assert plain.generate("a red circle", **FAST)[0].info["lienzo"]["safety_checker"] is None
    with pytest.raises(ModelNotFoundError, match="safety_checker/config.json"):
        plain.generate("a red circle", safety_checker="on", **FAST)
    with pytest.raises(InvalidArgumentError, match="auto, on, off"):
        plain.generate("a red circle", safety_checker="maybe", **FAST)


def test_generate_command_notes_a_flagged_image(tmp_path):
    folder = folder_with_checker(tmp_path, -2.0)
    output = tmp_path / "out"
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    command = [sys.executable, "-m", "lienzo.cli", "generate", "a red circle", "--model", str(folder)]
    command += ["--steps", "2", "--size", "32x32", "--seed", "1", "--device", "cpu", "-q", "-o", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    (written,) = output.glob("*.png")
    assert f"note: the safety checker flagged {written} as NSFW" in done.stderr
    assert "Safety checker: flagged" in read_parameters(written)
    with Image.open(written) as image:
        assert np.asarray(image).max() == 0


def test_the_server_setting_decides_for_a1111_jobs(tmp_path):
    pipe = lienzo.load(folder_with_checker(tmp_path, -2.0), device="cpu", dtype=torch.float32)
    body = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "sampler_name": "Euler"}
    request = read_request("txt2img", body, None)
    with pytest.warns(NSFWContentWarning):
        (flagged,) = draw(pipe, request, 3, None)
    assert was_flagged(flagged) and np.asarray(flagged).max() == 0
    (kept,) = draw(pipe, request, 3, None, safety_checker="off")
    assert not was_flagged(kept) and np.asarray(kept).max() > 0
    with pytest.raises(InvalidArgumentError, match="auto, on, off"):
        ServerConfig(output_dir=tmp_path / "out", safety_checker="maybe")
