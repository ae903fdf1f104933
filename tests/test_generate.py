"""txt2img, img2img, hires fix, refiner, seeds and options on tiny random-weight models of each family."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

import lienzo
from lienzo.errors import InvalidArgumentError
from lienzo.models.specs import family_spec
from lienzo.pipelines.options import RECORD_KEYS, HiresOptions, RefinerOptions, resolve_options
from lienzo.pipelines.steps import initial_noise, inpaint_blend_denoiser, latent_shape, slerp
from tiny_models import tiny_pipeline_folder

SIZE = 32
FAST = {"width": SIZE, "height": SIZE, "steps": 2, "seed": 11}


@functools.cache
def tiny(family: str) -> lienzo.Pipeline:
    return lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sd2-v", "sdxl", "sdxl-refiner"])
def test_txt2img_every_family_gives_finite_images_with_records(family):
    images = tiny(family).generate("a red circle", batch_size=2, **FAST)
    assert [image.size for image in images] == [(SIZE, SIZE)] * 2
    assert all(np.isfinite(pixels(image)).all() for image in images)
    assert pixels(images[0]).std() > 0
    records = [image.info["lienzo"] for image in images]
    assert set(records[0]) == set(RECORD_KEYS)
    assert [record["seed"] for record in records] == [11, 12]
    assert records[1]["batch_index"] == 1 and records[0]["family"] == family
    assert records[0]["sampler"] == "dpmpp_2m" and records[0]["scheduler"] == "karras"


def test_same_seed_gives_identical_bytes():
    first = tiny("sd1").generate("a blue square", negative_prompt="red", **FAST)[0]
    second = tiny("sd1").generate("a blue square", negative_prompt="red", **FAST)[0]
    other = tiny("sd1").generate("a blue square", negative_prompt="red", **{**FAST, "seed": 12})[0]
    assert first.tobytes() == second.tobytes()
    assert first.tobytes() != other.tobytes()


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler_ancestral"])
def test_batch_item_i_equals_single_run_with_seed_plus_i(sampler):
    pipe = tiny("sd1")
    batch = pipe.generate("a green star", batch_size=3, sampler=sampler, **FAST)
    single = pipe.generate("a green star", sampler=sampler, **{**FAST, "seed": 13})[0]
    assert np.abs(pixels(batch[2]) - pixels(single)).max() <= 1
    assert batch[0].tobytes() != batch[2].tobytes()


def test_seed_none_picks_and_records_a_seed():
    image = tiny("sd1").generate("a circle", **{**FAST, "seed": None})[0]
    seed = image.info["lienzo"]["seed"]
    assert isinstance(seed, int) and seed >= 0
    again = tiny("sd1").generate("a circle", **{**FAST, "seed": seed})[0]
    assert again.tobytes() == image.tobytes()


def test_noise_is_cpu_float32_from_seed_plus_index():
    options = resolve_options(family_spec("sd1"), seed=5, batch_size=2)
    noise = initial_noise(options, (4, 8, 8))
    expected = torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(6))
    assert noise.dtype == torch.float32 and noise.shape == (2, 4, 8, 8)
    assert torch.equal(noise[1], expected)


def test_variation_strength_slerps_between_seed_and_variation_noise():
    spec = family_spec("sd1")
    plain = initial_noise(resolve_options(spec, seed=5), (4, 8, 8))
    other = initial_noise(resolve_options(spec, seed=9), (4, 8, 8))
    half = initial_noise(resolve_options(spec, seed=5, variation_seed=9, variation_strength=0.5), (4, 8, 8))
    full = initial_noise(resolve_options(spec, seed=5, variation_seed=9, variation_strength=1.0), (4, 8, 8))
    assert torch.allclose(full, other, atol=1e-5)
    assert torch.allclose(half, slerp(0.5, plain, other))
    assert half.std() > 0.9 * plain.std()


def test_slerp_keeps_the_norm_of_orthogonal_unit_vectors():
    start, end = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    middle = slerp(0.5, start, end)
    assert torch.allclose(middle.norm(), torch.tensor(1.0))


def test_defaults_follow_the_family():
    sdxl = resolve_options(family_spec("sdxl"), prompt="x")
    assert (sdxl.width, sdxl.height, sdxl.steps, sdxl.cfg) == (1024, 1024, 20, 7.0)
    assert resolve_options(family_spec("sd2-v")).width == 768
    assert resolve_options(family_spec("sd1")).height == 512


def test_a1111_sampler_name_sets_the_scheduler():
    options = resolve_options(family_spec("sd1"), sampler="Euler a", scheduler=None)
    assert (options.sampler, options.scheduler) == ("euler_ancestral", "karras")
    options = resolve_options(family_spec("sd1"), sampler="DPM++ 2M Karras")
    assert (options.sampler, options.scheduler) == ("dpmpp_2m", "karras")
    options = resolve_options(family_spec("sd1"), sampler="Euler", scheduler="normal")
    assert options.scheduler == "normal"


@pytest.mark.parametrize(
    ("values", "fix"),
    [
        ({"width": 65}, "multiple of 8"),
        ({"height": 0}, "multiple of 8"),
        ({"steps": 0}, "steps must be 1 or more"),
        ({"strength": 1.5}, "[0, 1]"),
        ({"sampler": "warp_drive"}, "use one of"),
        ({"scheduler": "wobbly"}, "use one of"),
        ({"batch_size": 0}, "batch size"),
        ({"seed": -3}, "seed=None"),
        ({"hires": HiresOptions(upscaler="magic")}, "upscaler"),
        ({"refiner": RefinerOptions(model=None)}, "REFINER_PATH"),
        ({"sampler": "euler_ancestral", "sampler_options": {"warp": 2}}, "eta=1.0, s_noise=1.0"),
        ({"colour": "red"}, "unknown generation option"),
    ],
)
def test_bad_values_raise_with_the_fix(values, fix):
    with pytest.raises(InvalidArgumentError) as error:
        resolve_options(family_spec("sd1"), **values)
    assert fix in str(error.value)


def test_generate_rejects_a_size_that_is_not_a_multiple_of_8():
    with pytest.raises(InvalidArgumentError, match="multiple of 8"):
        tiny("sd1").generate("x", width=30, height=SIZE, steps=1)


def test_callback_sees_every_step():
    seen = []
    tiny("sd1").generate("x", callback=seen.append, **{**FAST, "steps": 3})
    assert [state["i"] for state in seen] == [0, 1, 2]
    assert {state["stage"] for state in seen} == {"base"} and seen[0]["total"] == 3
    assert seen[0]["denoised"].shape == (1, 4, SIZE // 2, SIZE // 2)


def test_img2img_keeps_size_and_records_strength():
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    images = tiny("sd1").img2img(source, "a red circle", strength=0.5, steps=4, seed=3, batch_size=2)
    assert [image.size for image in images] == [(48, 40)] * 2
    assert images[0].info["lienzo"]["strength"] == 0.5 and images[0].info["lienzo"]["mode"] == "img2img"
    assert images[0].tobytes() != images[1].tobytes()


def test_img2img_strength_zero_is_the_vae_round_trip():
    pipe = tiny("sd1")
    source = Image.fromarray(np.random.default_rng(1).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    kept = pipe.img2img(source, "x", strength=0.0, steps=4, seed=3)[0]
    changed = pipe.img2img(source, "x", strength=1.0, steps=4, seed=3)[0]
    round_trip = pipe.img2img(source, "y", strength=0.0, steps=4, seed=9)[0]
    assert kept.tobytes() == round_trip.tobytes()
    assert kept.tobytes() != changed.tobytes()


def test_img2img_unreadable_image_says_so(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        tiny("sd1").img2img(broken, "x", steps=1)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        tiny("sd1").img2img(tmp_path / "missing.png", "x", steps=1)


@pytest.mark.parametrize("upscaler", ["latent", "image"])
def test_hires_fix_doubles_the_size(upscaler):
    hires = HiresOptions(scale=2.0, steps=2, strength=0.5, upscaler=upscaler)
    image = tiny("sd1").generate("x", hires=hires, **FAST)[0]
    assert image.size == (2 * SIZE, 2 * SIZE)
    record = image.info["lienzo"]["hires"]
    assert (record["width"], record["upscaler"]) == (2 * SIZE, upscaler)


def test_refiner_takes_over_at_switch_point():
    base, refiner = tiny("sdxl"), tiny_pipeline_folder("sdxl-refiner")
    stages = []
    refined = base.generate(
        "x", refiner=RefinerOptions(refiner, switch_at=0.5), callback=stages.append, **{**FAST, "steps": 4}
    )[0]
    assert [state["stage"] for state in stages] == ["base", "base", "refiner", "refiner"]
    plain = base.generate("x", **{**FAST, "steps": 4})[0]
    untouched = base.generate("x", refiner=RefinerOptions(refiner, switch_at=1.0), **{**FAST, "steps": 4})[0]
    assert untouched.tobytes() == plain.tobytes()
    assert refined.tobytes() != plain.tobytes()
    assert refined.info["lienzo"]["refiner"]["switch_at"] == 0.5


def test_inpaint_blend_keeps_the_unmasked_latent():
    latent = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    blended = inpaint_blend_denoiser(lambda x, sigma: x * 0 + 5, latent, mask, torch.randn(1, 4, 8, 8))
    x0 = blended(torch.randn(1, 4, 8, 8), torch.tensor([3.0]))
    assert torch.equal(x0[..., 4:], latent[..., 4:])
    assert torch.all(x0[..., :4] == 5)


def test_single_file_carries_name_and_a1111_model_hash(tmp_path):
    single = tmp_path / "tiny-sd1.safetensors"
    lienzo.io.write_model(lienzo.io.read_model(tiny_pipeline_folder("sd1")), single, format="single-file")
    pipe = lienzo.load(single, device="cpu", dtype=torch.float32)
    assert pipe.name == "tiny-sd1"
    assert pipe.model_hash is not None and len(pipe.model_hash) == 10
    record = pipe.generate("x", **FAST)[0].info["lienzo"]
    assert (record["model"], record["model_hash"]) == ("tiny-sd1", pipe.model_hash)


def test_any_multiple_of_8_fits_and_other_sizes_name_the_nearest_one():
    sd1_like = family_spec("sd1")
    assert latent_shape(sd1_like, 640, 512) == (4, 64, 80)
    assert latent_shape(sd1_like, 520, 456) == (4, 57, 65)
    with pytest.raises(InvalidArgumentError, match="width 518 .* multiple of 8, e.g. 520"):
        latent_shape(sd1_like, 518, 512)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_txt2img_at_odd_latent_sides(family):
    """72x88 px is a 9x11 latent: the UNet's downsampling rounds up and its upsampling meets the skips."""
    images = tiny(family).generate("a red circle", **{**FAST, "width": 72, "height": 88})
    assert images[0].size == (72, 88)
    assert pixels(images[0]).std() > 0


def test_img2img_default_size_is_the_image_rounded_down_to_multiples_of_8():
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (95, 77, 3), dtype=np.uint8))
    images = tiny("sd1").img2img(source, "a red circle", steps=2, seed=1)
    assert images[0].size == (72, 88)


def test_text_encoders_run_once_per_call_whatever_the_batch():
    pipe = tiny("sdxl")
    calls = []
    hooks = [encoder.register_forward_hook(lambda *_: calls.append(1)) for encoder in pipe.text_encoders]
    try:
        pipe.generate("x", negative_prompt="y", batch_size=3, sampler="euler_ancestral", **FAST)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(calls) == len(pipe.text_encoders)


def test_a_stochastic_batch_runs_at_once_and_gives_item_i_the_image_of_seed_plus_i():
    pipe = tiny("sd1")
    settings = {**FAST, "sampler": "euler_ancestral", "steps": 3, "progress": False}
    calls = []
    batch = pipe.generate("x", batch_size=4, callback=calls.append, **settings)
    assert {state["x"].shape[0] for state in calls} == {4} and len(calls) == 3
    for index, image in enumerate(batch):
        alone = pipe.generate("x", **{**settings, "seed": FAST["seed"] + index})[0]
        difference = np.abs(pixels(image) - pixels(alone)).max()
        assert difference <= 1, (index, difference)
    assert batch[0].tobytes() != batch[1].tobytes()


def test_sampler_options_reach_the_sampler_and_the_record():
    pipe = tiny("sd1")
    settings = {**FAST, "sampler": "euler_ancestral", "steps": 3, "progress": False}
    default = pipe.generate("x", **settings)[0]
    explicit = pipe.generate("x", sampler_options={"eta": 1.0, "s_noise": 1.0}, **settings)[0]
    quiet = pipe.generate("x", sampler_options={"eta": 0.0}, **settings)[0]
    euler = pipe.generate("x", **{**settings, "sampler": "euler"})[0]
    scaled = pipe.generate("x", sampler_options={"s_noise": 0.5}, **settings)[0]
    assert explicit.tobytes() == default.tobytes()
    assert quiet.tobytes() == euler.tobytes()
    assert scaled.tobytes() not in (default.tobytes(), quiet.tobytes())
    assert quiet.info["lienzo"]["sampler_options"] == {"eta": 0.0}
    assert default.info["lienzo"]["sampler_options"] == {}


def test_inpaint_and_outpaint_hand_over_to_the_refiner():
    base, refiner = tiny("sdxl"), RefinerOptions(tiny_pipeline_folder("sdxl-refiner"), switch_at=0.5)
    image = Image.new("RGB", (SIZE, SIZE), (40, 90, 200))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (8, 8, 24, 24))
    stages = []
    settings = {**FAST, "steps": 4, "progress": False}
    result = base.inpaint(image, mask, "x", refiner=refiner, callback=stages.append, **settings)[0]
    assert [state["stage"] for state in stages] == ["base", "base", "refiner", "refiner"]
    assert result.info["lienzo"]["refiner"]["switch_at"] == 0.5
    assert np.array_equal(pixels(result)[:4], pixels(image)[:4])
    stages.clear()
    wider = base.outpaint(image, "x", right=8, refiner=refiner, callback=stages.append, **settings)[0]
    assert wider.size == (SIZE + 8, SIZE) and "refiner" in {state["stage"] for state in stages}
