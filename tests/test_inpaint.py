"""Inpainting: mask helpers, unmasked pixels kept by both model kinds, parity with diffusers."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.masking import (
    Box,
    ConcatChannels,
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


def test_concat_channels_repeats_the_extra_input_to_the_batch():
    seen = {}

    def unet(x, t, context, y=None):
        seen["x"] = x
        return x[:, :4]

    extra = torch.arange(5.0).reshape(1, 5, 1, 1).expand(1, 5, 2, 2)
    out = ConcatChannels(unet, extra)(torch.zeros(2, 4, 2, 2), torch.zeros(2), torch.zeros(2, 1, 8))
    assert seen["x"].shape == (2, 9, 2, 2) and out.shape == (2, 4, 2, 2)
    assert torch.equal(seen["x"][1, 4:], extra[0])
