"""ControlNet training: a new ControlNet copies the UNet's encoder and changes nothing until trained;
`lienzo train controlnet` trains, samples, resumes and writes a folder `--controlnet` loads; control images
come from `name.control.png` or the cached preprocessor; bad input stops before any output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import lienzo
from lienzo.cli import main
from lienzo.errors import InvalidArgumentError
from lienzo.models.conditioning import Conditioning
from lienzo.pipelines.control_units import ControlUnit
from lienzo.pipelines.controlnets import LoadedControlNet, load_controlnet
from lienzo.pipelines.preprocessors import canny, preprocess
from lienzo.recipes.controlnet_shapes import ControlNetShapesRecipe, follow_rate, write_control_scenes
from lienzo.training.captioned_dataset import CaptionedDataset, DataConfig
from lienzo.training.control_images import control_paths
from lienzo.training.controlnet_training import new_controlnet
from lienzo.worlds.scorer import score
from lienzo.worlds.shapes import POSITION_PHRASES, caption, render, sample_scene
from tiny_models import tiny_pipeline_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def write_scenes(folder, count: int, *, pairs: bool = False, seed: int = 0):
    """`count` captioned world scenes; with `pairs` each with its canny map as NAME.control.png."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        scene = sample_scene(rng)
        image = render(scene)
        image.save(folder / f"{index:02d}.png")
        (folder / f"{index:02d}.txt").write_text(caption(scene, rng))
        if pairs:
            canny(image).save(folder / f"{index:02d}.control.png")
    return folder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("scenes"), 4)


def test_a_new_controlnet_copies_the_encoder_and_changes_nothing_nor_does_strength_zero():
    pipe = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    controlnet = new_controlnet(pipe.unet, pipe.spec.vae.downscale_factor)
    unet = pipe.unet.state_dict()
    copied = [key for key in controlnet.state_dict() if key in unet]
    assert any(key.startswith("input_blocks.") for key in copied) and any(
        "middle_block." in k for k in copied
    )
    for key in copied:
        assert torch.equal(controlnet.state_dict()[key], unet[key]), key
    assert controlnet.input_hint_block[0].weight.abs().sum() > 0
    edges = canny(render(sample_scene(np.random.default_rng(3))))
    unit = ControlUnit(LoadedControlNet(controlnet, "new"), edges)

    def drawn(*units) -> np.ndarray:
        image = pipe.generate("a red circle", seed=5, steps=3, width=32, height=32, controlnets=list(units))
        return np.asarray(image[0])

    plain = drawn()
    assert np.array_equal(plain, drawn(unit))
    with torch.no_grad():
        for param in controlnet.zero_convs.parameters():
            param.add_(0.1)
    assert not np.array_equal(plain, drawn(unit))
    assert np.array_equal(plain, drawn(ControlUnit(unit.model, edges, strength=0.0)))


def test_the_command_trains_samples_resumes_and_the_folder_loads(scenes, tmp_path, capsys):
    out = tmp_path / "edges"
    common = ["train", "controlnet", "--data", str(scenes), "--control", "canny", "--out", str(out)]
    common += ["--resolution", "64", "--batch-size", "2", "--fp16", "--quiet"]
    sampling = ["--sample-every", "2", "--sample-prompt", "a red circle on a blue background"]
    assert main([*common, "--steps", "2", "--save-every", "1", *sampling]) == 0
    run = tmp_path / "edges-training"
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    assert (run / "loss.png").is_file() and len(list((run / "control_cache").glob("*.png"))) == 4
    with Image.open(run / "samples" / "step_000002.png") as grid:
        assert grid.width == 2 * grid.height  # the control image, then the sample
    assert main([*common, "--steps", "3"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([*common, "--steps", "3", "--resume"]) == 0
    assert [line.split(",")[0] for line in (run / "loss.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
    pipe = lienzo.load()
    loaded = load_controlnet(out, pipe)
    weights = dict(loaded.model.named_parameters())
    assert loaded.layout == "diffusers-folder" and weights["zero_convs.0.0.weight"].abs().sum() > 0
    state = torch.load(run / "training_state.pt", weights_only=True)["modules"]["controlnet"]
    for name, value in state.items():
        torch.testing.assert_close(weights[name], value.half().to(weights[name].dtype), rtol=0, atol=0)
    drawn = ["generate", "a red circle on a blue background", "--steps", "2", "--out", str(tmp_path / "x")]
    drawn += ["--controlnet", str(out), "--control-image", str(scenes / "00.png")]
    drawn += ["--control-preprocess", "canny"]
    assert main(drawn) == 0


def test_control_images_come_from_pairs_or_the_keyed_cache(tmp_path):
    pairs = write_scenes(tmp_path / "pairs", 2, pairs=True)
    dataset = CaptionedDataset(DataConfig(pairs, resolution=64), 1)
    assert [path.name for path in control_paths(dataset.examples, None, tmp_path / "c")] == [
        "00.control.png",
        "01.control.png",
    ]
    assert len(dataset.examples) == 2  # the control images are not training images
    (pairs / "01.control.png").unlink()
    with pytest.raises(InvalidArgumentError, match="01.png"):
        control_paths(dataset.examples, None, tmp_path / "c")
    made = []

    def counted(kind, image, **options):
        made.append(kind)
        return preprocess(kind, image, **options)

    cache = tmp_path / "cache"
    found = control_paths(dataset.examples, "canny", cache, preprocess=counted)
    assert found[0].name == "00.control.png" and found[1].parent == cache and made == ["canny"]
    assert np.array_equal(np.asarray(Image.open(found[1])), np.asarray(canny(Image.open(pairs / "01.png"))))
    assert control_paths(dataset.examples, "canny", cache, preprocess=counted) == found and made == ["canny"]
    other = control_paths(
        dataset.examples, "canny", cache, {"low_threshold": 20, "high_threshold": 60}, counted
    )
    scribbled = control_paths(dataset.examples, "scribble", cache, preprocess=counted)
    assert len({found[1], other[1], scribbled[1]}) == 3 and made == ["canny", "canny", "scribble"]
    with pytest.raises(InvalidArgumentError, match="unknown control kind 'pose'"):
        control_paths(dataset.examples, "pose", cache, preprocess=counted)


def test_bad_input_stops_before_any_output(scenes, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "runs" / "edges"
    assert main(["train", "controlnet", "--data", str(empty), "--control", "canny", "--out", str(out)]) == 1
    assert "holds no images" in capsys.readouterr().err
    assert main(["train", "controlnet", "--data", str(scenes), "--out", str(out), "--quiet"]) == 1
    assert "have no control image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "controlnet", "--data", str(scenes), "--control", "pose", "--out", str(out)])
    assert "invalid choice: 'pose'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))


def test_the_recipe_data_and_the_follow_measurement(tmp_path):
    folder = write_control_scenes(tmp_path / "data", ControlNetShapesRecipe(scenes=24))
    captions = [path.read_text() for path in sorted(folder.glob("*.txt"))]
    assert len(captions) == 24 and len(list(folder.glob("*.png"))) == 24
    placed = [any(phrase in text for phrase in POSITION_PHRASES.values()) for text in captions]
    assert 4 <= placed.count(False) and 4 <= placed.count(True)
    pipe = lienzo.load()
    untrained = LoadedControlNet(new_controlnet(pipe.unet, pipe.spec.vae.downscale_factor).eval(), "new")
    rate, items = follow_rate(pipe, untrained, 2, steps=2)
    for item in items:
        assert not any(phrase in item.prompt for phrase in POSITION_PHRASES.values())
        assert any(phrase in item.expected for phrase in POSITION_PHRASES.values())
        assert item.matched == score(item.expected, item.image).matched
    assert rate == sum(item.matched for item in items) / 2


def test_hint_from_starts_the_hint_block_from_another_controlnet_and_still_adds_nothing():
    pipe = lienzo.load(device="cpu", dtype=torch.float32)
    source = load_controlnet("shapes-v1-canny", device="cpu", dtype=torch.float32).model  # for shapes-v1
    controlnet = new_controlnet(pipe.unet, pipe.spec.vae.downscale_factor, hint_from=source)
    theirs = source.input_hint_block.state_dict()
    for key, value in controlnet.input_hint_block.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    assert theirs[f"{len(source.input_hint_block) - 1}.weight"].abs().sum() > 0
    assert all(param.abs().sum() == 0 for param in controlnet.zero_convs.parameters())
    x = torch.randn(1, pipe.spec.vae.embed_dim, 16, 16)
    edges = torch.rand(1, 3, 128, 128)
    cond = Conditioning(torch.randn(1, 77, 128))
    residuals = controlnet(x, edges, torch.tensor([500]), cond)
    assert all(skip.abs().sum() == 0 for skip in residuals.skips) and residuals.middle.abs().sum() == 0
    tiny = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    with pytest.raises(InvalidArgumentError, match="does not fit this model's ControlNet"):
        new_controlnet(tiny.unet, tiny.spec.vae.downscale_factor, hint_from=source)


def test_the_command_takes_hint_from_by_name_and_refuses_one_that_does_not_fit(scenes, tmp_path, capsys):
    out = tmp_path / "edges"
    common = ["train", "controlnet", "--data", str(scenes), "--control", "canny", "--out", str(out)]
    common += ["--resolution", "128", "--batch-size", "2", "--steps", "1", "--learning-rate", "0", "--quiet"]
    assert main([*common, "--hint-from", "shapes-v1-canny"]) == 0
    pipe = lienzo.load(device="cpu", dtype=torch.float32)
    trained = load_controlnet(out, pipe).model.input_hint_block.state_dict()
    source = load_controlnet("shapes-v1-canny", dtype=torch.float32).model.input_hint_block.state_dict()
    for key, value in source.items():
        assert torch.equal(trained[key], value), key
    other = tmp_path / "other"
    tiny = ["--model", str(tiny_pipeline_folder("sd1")), "--hint-from", "shapes-v1-canny"]
    assert main([*common[:7], str(other), *common[8:], *tiny]) == 1
    assert "does not fit this model's ControlNet" in capsys.readouterr().err
    assert not other.exists()
    assert ControlNetShapesRecipe(model="shapes-v2", hint_from="shapes-v1-canny").command(tmp_path, out)[
        -4:
    ] == ["--model", "shapes-v2", "--hint-from", "shapes-v1-canny"]
