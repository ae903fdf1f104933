"""Inpainting: mask helpers, unmasked pixels kept by both model kinds, parity with diffusers."""

from __future__ import annotations

import diffusers
import pytest
import torch
from PIL import Image, ImageDraw

import lienzo
from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.generation import generate_latents
from lienzo.pipelines.inpaint import InpaintRegion, inpaint_conditions
from lienzo.pipelines.masking import (
    Box,
    binarize,
    blur_mask,
    check_mask_size,
    composite_alpha,
    crop_box,
    latent_mask,
    mask_to_tensor,
    masked_image,
    paste_back,
)
from lienzo.pipelines.options import HiresOptions, resolve_options
from lienzo.pipelines.steps import schedule_sigmas
from tiny_models import tiny_pipeline_folder

INPAINT_FAMILIES = ("sd1-inpaint", "sd1")


def rectangle_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A black mask of `size` with a white (repaint) rectangle [left, right) x [top, bottom)."""
    mask = Image.new("L", size, 0)
    left, top, right, bottom = box
    ImageDraw.Draw(mask).rectangle((left, top, right - 1, bottom - 1), fill=255)
    return mask


def noise_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A reproducible RGB image of random pixels."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def test_crop_box_pads_keeps_aspect_and_multiples_of_8():
    mask = rectangle_mask((200, 120), (90, 50, 110, 60))
    box = crop_box(mask, padding=8, target_size=(64, 32), image_size=(200, 120))
    assert box.left <= 82 and box.right >= 118 and box.top <= 42 and box.bottom >= 68
    assert box.width % 8 == 0 and box.height % 8 == 0
    assert box.width == 2 * box.height
    assert 0 <= box.left and box.right <= 200 and 0 <= box.top and box.bottom <= 120


def test_crop_box_shifts_inside_the_image_at_an_edge():
    mask = rectangle_mask((64, 64), (0, 0, 4, 4))
    box = crop_box(mask, padding=16, target_size=(32, 32), image_size=(64, 64))
    assert box == Box(0, 0, 24, 24)


def test_crop_box_clamps_to_a_small_image_and_covers_empty_masks():
    assert crop_box(rectangle_mask((40, 24), (8, 8, 16, 16)), 32, (64, 64), (40, 24)) == Box(0, 0, 40, 24)
    assert crop_box(Image.new("L", (48, 32), 0), 8, (64, 64), (48, 32)) == Box(0, 0, 48, 32)


@pytest.mark.parametrize("padding", [-8, 5])
def test_crop_box_rejects_bad_padding(padding):
    with pytest.raises(InvalidArgumentError, match="multiple of 8"):
        crop_box(rectangle_mask((32, 32), (8, 8, 16, 16)), padding, (32, 32), (32, 32))


def test_paste_back_keeps_pixels_outside_the_sharp_mask_bit_for_bit():
    original, generated = noise_image((48, 40), 1), noise_image((64, 64), 2)
    mask = rectangle_mask((48, 40), (16, 8, 40, 32))
    alpha = composite_alpha(mask, blur_mask(mask, 4))
    box = Box(8, 0, 48, 40)
    result = paste_back(original, generated, alpha, box)
    keep = mask_to_tensor(mask) < 0.5
    before, after = (torch.tensor(list(image.getdata())) for image in (original, result))
    keep = keep.flatten()
    assert torch.equal(before[keep], after[keep])
    assert not torch.equal(before[~keep], after[~keep])


def test_blur_softens_only_near_the_edge_and_composite_alpha_is_zero_outside():
    mask = rectangle_mask((32, 32), (8, 8, 24, 24))
    blurred = mask_to_tensor(blur_mask(mask, 2))
    alpha = mask_to_tensor(composite_alpha(mask, blur_mask(mask, 2)))
    assert 0 < blurred[0, 0, 16, 7] < 1 and blurred[0, 0, 16, 16] > 0.99
    assert alpha[0, 0, 16, 7] == 0 and 0 < alpha[0, 0, 16, 8] < 1
    with pytest.raises(InvalidArgumentError, match="mask_blur"):
        blur_mask(mask, -1)


def test_mask_size_must_match_the_image():
    with pytest.raises(InvalidArgumentError, match="same size"):
        check_mask_size(Image.new("L", (32, 24)), Image.new("RGB", (32, 32)))


def test_latent_mask_and_masked_image_follow_diffusers():
    mask = mask_to_tensor(binarize(rectangle_mask((32, 32), (8, 8, 24, 16))))
    small = latent_mask(mask, (4, 4))
    expected = torch.zeros(1, 1, 4, 4)
    expected[..., 1:2, 1:3] = 1
    assert torch.equal(small, expected)
    image = torch.ones(1, 3, 32, 32)
    assert masked_image(image, mask).sum() == 3 * (32 * 32 - 16 * 8)


SIZE = (48, 40)
MASK_BOX = (8, 8, 32, 24)
FAST = {"steps": 2, "seed": 3, "sampler": "euler", "cfg": 5.0}


@pytest.fixture(scope="module")
def pipes() -> dict:
    return {
        family: lienzo.load(tiny_pipeline_folder(family), device="cpu", dtype=torch.float32)
        for family in INPAINT_FAMILIES
    }


def pixels(image: Image.Image) -> torch.Tensor:
    """(H, W, 3) uint8 tensor of an RGB image."""
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(
        image.height, image.width, 3
    )


def kept(image: Image.Image, mask: Image.Image) -> torch.Tensor:
    """The pixels of `image` outside the (sharp) mask."""
    return pixels(image)[mask_to_tensor(mask)[0, 0] < 0.5]


@pytest.mark.parametrize("family", INPAINT_FAMILIES)
@pytest.mark.parametrize("only_masked", [False, True])
def test_inpaint_keeps_unmasked_pixels_bit_for_bit(pipes, family, only_masked):
    image, mask = noise_image(SIZE), rectangle_mask(SIZE, MASK_BOX)
    results = pipes[family].inpaint(
        image, mask, "a red circle", only_masked=only_masked, padding=8, width=32, height=32, **FAST
    )
    result = results[0]
    assert result.size == SIZE and result.info["lienzo"]["mode"] == "inpaint"
    assert torch.equal(kept(result, mask), kept(image, mask))
    assert not torch.equal(pixels(result), pixels(image))


def test_inpaint_is_deterministic_and_batch_items_follow_seeds(pipes):
    image, mask = noise_image(SIZE), rectangle_mask(SIZE, MASK_BOX)
    batch = pipes["sd1"].inpaint(image, mask, "a cat", batch_size=2, **FAST)
    second = pipes["sd1"].inpaint(image, mask, "a cat", **{**FAST, "seed": FAST["seed"] + 1})
    assert batch[1].tobytes() == second[0].tobytes()
    assert batch[0].tobytes() != batch[1].tobytes()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask": Image.new("L", (40, 40))}, "same size"),
        ({"padding": -8, "only_masked": True}, "multiple of 8"),
        ({"padding": 12}, "multiple of 8"),
        ({"strength": 1.5}, r"\[0, 1\]"),
        ({"strength": -0.1}, r"\[0, 1\]"),
        ({"image": "does-not-exist.png"}, "does not exist"),
    ],
)
def test_inpaint_rejects_bad_input(pipes, kwargs, message):
    arguments = {"image": noise_image(SIZE), "mask": rectangle_mask(SIZE, MASK_BOX), **kwargs}
    with pytest.raises(InvalidArgumentError, match=message):
        pipes["sd1"].inpaint(arguments.pop("image"), arguments.pop("mask"), "a cat", **arguments, **FAST)


@pytest.mark.parametrize("family", INPAINT_FAMILIES)
def test_inpaint_with_hires_fix_samples_again_at_the_larger_size(pipes, family):
    """The hires pass gets the mask (and an inpaint model its masked-image channels) at its own size."""
    image, mask = noise_image(SIZE), rectangle_mask(SIZE, MASK_BOX)
    seen = []
    hires = HiresOptions(scale=1.5, strength=0.6)
    result = pipes[family].inpaint(image, mask, "a red circle", hires=hires, callback=seen.append, **FAST)[0]
    factor = pipes[family].spec.vae.downscale_factor
    stages = {state["stage"]: tuple(factor * side for side in state["x"].shape[-2:]) for state in seen}
    assert stages == {"base": (40, 48), "hires": (56, 72)}
    assert result.size == SIZE and result.info["lienzo"]["hires"]["width"] == 72
    assert torch.equal(kept(result, mask), kept(image, mask))
    assert not torch.equal(pixels(result), pixels(image))


def test_inpaint_rejects_an_unreadable_image(pipes, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        pipes["sd1"].inpaint(noise_image(SIZE), broken, "a cat", **FAST)


def diffusers_inpaint_latents(
    family: str, image: Image.Image, mask: Image.Image, sigmas: torch.Tensor, strength: float
) -> torch.Tensor:
    """Latents from diffusers' StableDiffusionInpaintPipeline with Euler over the same sigmas and seed.

    The image and masked-image latents are given as VAE means (diffusers would draw samples), so the
    seeded generator is used only for the initial noise, as in lienzo.
    """
    folder = tiny_pipeline_folder(family)
    reference = diffusers.StableDiffusionInpaintPipeline.from_pretrained(folder, safety_checker=None)
    reference.scheduler = diffusers.EulerDiscreteScheduler.from_config(
        reference.scheduler.config, timestep_spacing="linspace"
    )
    reference.set_progress_bar_config(disable=True)
    width, height = image.size
    init = reference.image_processor.preprocess(image, height=height, width=width)
    condition = reference.mask_processor.preprocess(mask, height=height, width=width)
    scale = reference.vae.config.scaling_factor
    with torch.no_grad():
        image_latents = reference.vae.encode(init).latent_dist.mean * scale
        masked_latents = reference.vae.encode(init * (condition < 0.5)).latent_dist.mean * scale
    return reference(
        "a red circle",
        image=image_latents,
        mask_image=mask,
        masked_image_latents=masked_latents,
        height=height,
        width=width,
        strength=strength,
        sigmas=sigmas.tolist(),
        guidance_scale=FAST["cfg"],
        generator=torch.Generator().manual_seed(FAST["seed"]),
        output_type="latent",
    ).images


@pytest.mark.parametrize(("family", "strength"), [("sd1-inpaint", 1.0), ("sd1", 0.5)])
def test_inpaint_latents_match_diffusers(pipes, family, strength):
    image, mask = noise_image((32, 32)), rectangle_mask((32, 32), (8, 8, 24, 20))
    pipe = pipes[family]
    settings = {**FAST, "steps": 4}
    options = resolve_options(
        pipe.spec, prompt="a red circle", width=32, height=32, strength=strength, mode="inpaint", **settings
    )
    conditions = inpaint_conditions(pipe, InpaintRegion(image, mask, Box(0, 0, 32, 32)), None)
    start = None if strength == 1 else conditions(32, 32).latent
    ours = generate_latents(pipe, options, start=start, conditions=conditions, progress=False)
    theirs = diffusers_inpaint_latents(family, image, mask, schedule_sigmas(pipe.spec, options), strength)
    error, scale = (ours - theirs).abs().max().item(), theirs.abs().max().item()
    print(f"{family} inpaint latents: max abs error {error:.2e}, largest value {scale:.2f}")
    assert error < 1e-5 * scale
