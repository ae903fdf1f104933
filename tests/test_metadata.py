"""A1111 `parameters` text: layout, round trips, real-world strings; PNG saving; output names; previews."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from PIL import Image

import lienzo
from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.metadata import format_parameters, parse_parameters, read_parameters, save_png
from lienzo.pipelines.options import RECORD_KEYS, GenerationOptions, HiresOptions
from lienzo.pipelines.output import prepare_target, release_paths, reserve_paths
from lienzo.pipelines.preview import LABEL_HEIGHT, FilmstripRecorder, Frame, filmstrip
from tiny_models import tiny_pipeline_folder

BASE = GenerationOptions(
    prompt="a red circle",
    negative_prompt="",
    width=512,
    height=512,
    steps=20,
    cfg=7.0,
    sampler="dpmpp_2m",
    scheduler="karras",
    seed=123,
)


def record_of(options: GenerationOptions, index: int = 0, **model) -> dict:
    return options.to_record(index, **model)


def comparable(record: dict) -> dict:
    """The record fields the parameters text carries (batch position and family are not written)."""
    ignored = {"batch_size", "batch_index", "family", "extra"}
    return {key: value for key, value in record.items() if key not in ignored}


def test_layout_matches_a1111_exactly():
    options = replace(
        BASE,
        negative_prompt="blurry",
        width=512,
        height=768,
        clip_skip=2,
        strength=0.6,
        variation_seed=7,
        variation_strength=0.25,
        mode="img2img",
    )
    text = format_parameters(record_of(options, model="name", model_hash="abc123"))
    assert text == (
        "a red circle\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x768, "
        "Model hash: abc123, Model: name, Denoising strength: 0.6, Clip skip: 2, Variation seed: 7, "
        f"Variation seed strength: 0.25, Version: lienzo {lienzo.__version__}"
    )


def test_plain_txt2img_leaves_out_empty_and_default_fields():
    text = format_parameters(record_of(BASE))
    assert text.splitlines() == [
        "a red circle",
        f"Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x512, "
        f"Version: lienzo {lienzo.__version__}",
    ]


def test_values_with_commas_colons_and_newlines_are_json_quoted():
    text = format_parameters(record_of(BASE, model='sd, v1: "best"\nfinal'))
    assert 'Model: "sd, v1: \\"best\\"\\nfinal"' in text


ROUND_TRIPS = [
    BASE,
    replace(BASE, prompt="a cat, (red:1.2), [blue]\nsecond line: more", negative_prompt="bad, ugly\nworse"),
    replace(BASE, sampler="euler_ancestral", scheduler="normal", cfg=7.5, seed=2**32 - 1, clip_skip=2),
    replace(BASE, sampler="uni_pc_bh2", scheduler="sgm_uniform", guidance_rescale=0.7, steps=3),
    replace(BASE, mode="img2img", strength=0.45, width=768, height=512),
    replace(BASE, hires=HiresOptions(scale=1.5, steps=10, strength=0.55, upscaler="latent-nearest")),
    replace(BASE, hires=HiresOptions(scale=2.0, upscaler="image"), variation_seed=9, variation_strength=0.1),
    replace(BASE, prompt="", negative_prompt="only a negative"),
    replace(BASE, prompt='ünïcødé ✓ «quotes» "double" \\ backslash', cfg=0.123456789),
]


@pytest.mark.parametrize("options", ROUND_TRIPS)
def test_round_trip(options):
    record = record_of(options, 1, model="my model, v2", model_hash="0123abcdef")
    parsed = parse_parameters(format_parameters(record))
    assert comparable(parsed) == comparable(record)
    assert parsed["extra"] == {"Version": f"lienzo {lienzo.__version__}"}


def test_round_trip_of_a_refiner_hand_off():
    record = {
        **record_of(BASE),
        "refiner": {"model": "sdxl_refiner", "model_hash": "7440042bbd", "switch_at": 0.75},
    }
    text = format_parameters(record)
    assert "Refiner: sdxl_refiner [7440042bbd], Refiner switch at: 0.75" in text
    assert parse_parameters(text)["refiner"] == record["refiner"]


@pytest.mark.parametrize(
    ("mask", "fields"),
    [
        ({"blur": 4.0, "only_masked": False, "padding": 32}, "Mask blur: 4, "),
        (
            {"blur": 8.0, "only_masked": True, "padding": 48},
            "Mask blur: 8, Inpaint area: Only masked, Masked area padding: 48, ",
        ),
    ],
)
def test_round_trip_of_inpaint_mask_settings(mask, fields):
    record = {**record_of(replace(BASE, mode="inpaint", strength=0.75)), "mask": mask}
    text = format_parameters(record)
    assert f"Denoising strength: 0.75, {fields}" in text
    parsed = parse_parameters(text)
    assert parsed["mode"] == "inpaint" and parsed["mask"] == mask and parsed["strength"] == 0.75


def test_inpainted_images_record_their_mask_settings():
    pipe = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 40, 40))
    (result,) = pipe.inpaint(
        image, mask, "a cat", steps=2, seed=1, mask_blur=2, only_masked=True, padding=8, width=32, height=32
    )
    assert result.info["lienzo"]["mask"] == {"blur": 2, "only_masked": True, "padding": 8}
    assert "Mask blur: 2, Inpaint area: Only masked, Masked area padding: 8" in format_parameters(
        result.info["lienzo"]
    )


def test_parses_an_old_a1111_file_with_the_schedule_in_the_sampler_name():
    text = (
        "masterpiece, best quality, 1girl, (blue hair:1.2), looking at viewer\n"
        "Negative prompt: lowres, bad anatomy, (worst quality:1.4)\n"
        "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 2310431371, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, ENSD: 31337"
    )
    parsed = parse_parameters(text)
    assert parsed["prompt"] == "masterpiece, best quality, 1girl, (blue hair:1.2), looking at viewer"
    assert parsed["negative_prompt"] == "lowres, bad anatomy, (worst quality:1.4)"
    assert (parsed["sampler"], parsed["scheduler"]) == ("dpmpp_2m", "karras")
    assert (parsed["steps"], parsed["cfg"], parsed["seed"]) == (28, 7.0, 2310431371)
    assert (parsed["width"], parsed["height"], parsed["clip_skip"]) == (512, 768, 2)
    assert (parsed["model"], parsed["model_hash"]) == ("v1-5-pruned-emaonly", "6ce0161689")
    assert parsed["mode"] == "txt2img" and parsed["hires"] is None
    assert parsed["extra"] == {"ENSD": "31337"}


def test_parses_a_recent_a1111_file_with_multiline_prompt_hires_and_quoted_hashes():
    text = (
        "a photo of a castle on a hill,\r\n"
        "golden hour, <lora:detail:0.6>\r\n"
        "BREAK dramatic sky\r\n"
        "Negative prompt: blurry, watermark\r\n"
        "Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 5.5, Seed: 42, Size: 768x512, "
        "Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.45, Hires upscale: 1.5, "
        'Hires steps: 15, Hires upscaler: Latent, Lora hashes: "detail: 62d1d4e1a5cd", Version: v1.10.1'
    )
    parsed = parse_parameters(text)
    assert (
        parsed["prompt"]
        == "a photo of a castle on a hill,\ngolden hour, <lora:detail:0.6>\nBREAK dramatic sky"
    )
    assert (parsed["sampler"], parsed["scheduler"], parsed["cfg"]) == ("euler_ancestral", "normal", 5.5)
    assert parsed["mode"] == "txt2img" and parsed["strength"] == 1.0
    assert parsed["hires"] == {
        "scale": 1.5,
        "steps": 15,
        "strength": 0.45,
        "upscaler": "latent",
        "width": 1152,
        "height": 768,
    }
    assert parsed["loras"] == {"detail": "62d1d4e1a5cd"}
    assert parsed["extra"] == {"Version": "v1.10.1"}


def test_parses_an_a1111_inpaint_file_and_keeps_unknown_samplers_as_written():
    text = (
        "portrait of an old man, oil painting\n"
        "Steps: 20, Sampler: Restart, CFG scale: 7.5, Seed: 1234567890, Size: 512x512, "
        "Model hash: cc6cb27103, Denoising strength: 0.75, Mask blur: 4, Version: v1.6.0"
    )
    parsed = parse_parameters(text)
    assert parsed["negative_prompt"] == "" and parsed["mode"] == "inpaint" and parsed["strength"] == 0.75
    assert (parsed["sampler"], parsed["scheduler"]) == ("Restart", "normal")
    assert parsed["mask"] == {"blur": 4.0, "only_masked": False, "padding": 32}


def test_img2img_without_mask_fields_parses_as_img2img():
    text = (
        "a harbour\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.6"
    )
    parsed = parse_parameters(text)
    assert parsed["mode"] == "img2img" and parsed["mask"] is None


def test_text_without_a_settings_line_is_all_prompt():
    parsed = parse_parameters("a cat: cute, fluffy\nNegative prompt: dogs")
    assert (parsed["prompt"], parsed["negative_prompt"]) == ("a cat: cute, fluffy", "dogs")
    assert parsed["steps"] is None and parsed["seed"] is None and parsed["sampler"] is None


def test_a_malformed_number_names_the_field():
    with pytest.raises(InvalidArgumentError, match="'Steps'"):
        parse_parameters("cat\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1")


def test_save_png_writes_parameters_and_workflow_atomically(tmp_path):
    image = Image.new("RGB", (16, 8), (200, 10, 30))
    record = record_of(replace(BASE, negative_prompt="dull"))
    path = save_png(image, tmp_path / "out.png", record, workflow={"nodes": [1, 2]})
    with Image.open(path) as written:
        assert written.info["parameters"] == format_parameters(record)
        assert written.info["workflow"] == '{"nodes": [1, 2]}'
        assert written.tobytes() == image.tobytes()
    assert read_parameters(path) == format_parameters(record)
    assert [entry.name for entry in tmp_path.iterdir()] == ["out.png"]


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(Image.new("RGB", (8, 8)), tmp_path / "out.png", record_of(BASE))
    assert list(tmp_path.iterdir()) == []


def test_read_parameters_errors_name_the_fix(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    (tmp_path / "text.png").write_text("not an image")
    for name, fragment in [
        ("absent.png", "does not exist"),
        ("text.png", "cannot read"),
        ("plain.png", "no gen"),
    ]:
        with pytest.raises(InvalidArgumentError, match=fragment):
            read_parameters(tmp_path / name)


def test_folder_names_continue_after_the_highest_number_and_never_replace(tmp_path):
    (tmp_path / "00007-1.png").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("x")
    paths = reserve_paths(prepare_target(tmp_path), [42, 43])
    assert [path.name for path in paths] == ["00008-42.png", "00009-43.png"]
    assert (tmp_path / "00007-1.png").read_bytes() == b"old"
    release_paths(paths)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["00007-1.png", "notes.txt"]


def test_file_names_take_the_next_free_suffix(tmp_path):
    target = prepare_target(tmp_path / "new" / "cat.png")
    first = reserve_paths(target, [1, 2])
    second = reserve_paths(target, [3])
    assert [path.name for path in first + second] == ["cat.png", "cat-1.png", "cat-2.png"]


def test_unwritable_targets_are_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InvalidArgumentError, match="writable"):
        prepare_target(blocker / "sub" / "out.png")
    with pytest.raises(InvalidArgumentError, match="PNG"):
        prepare_target(tmp_path / "out.jpg")


def test_filmstrip_places_labelled_frames_side_by_side():
    frames = [
        Frame("step 5", Image.new("RGB", (40, 30), "red")),
        Frame("hires 2", Image.new("RGB", (80, 60), "blue")),
    ]
    strip = filmstrip(frames)
    assert strip.size == (40 + 40, 30 + LABEL_HEIGHT)
    assert strip.getpixel((20, LABEL_HEIGHT + 10)) == (255, 0, 0)
    assert strip.getpixel((60, LABEL_HEIGHT + 10)) == (0, 0, 255)
    assert len(set(strip.crop((0, 0, 40, LABEL_HEIGHT)).getdata())) > 1
    with pytest.raises(InvalidArgumentError):
        filmstrip([])


def test_recorder_decodes_every_nth_prediction_and_the_last():
    torch.manual_seed(0)
    pipe = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    recorder = FilmstripRecorder(pipe, every=2)
    (image,) = pipe.generate(
        "a cat", width=32, height=32, steps=5, seed=3, sampler="euler", callback=recorder
    )
    assert [frame.label for frame in recorder.frames] == ["step 2", "step 4", "step 5"]
    assert recorder.frames[-1].image.tobytes() == image.tobytes()
    assert recorder.frames[0].image.tobytes() != image.tobytes()
    assert recorder.filmstrip().height == 32 + LABEL_HEIGHT


def test_record_keys_are_the_contract():
    assert set(record_of(BASE)) == set(RECORD_KEYS)
    assert set(RECORD_KEYS) <= set(parse_parameters(format_parameters(record_of(BASE))))
