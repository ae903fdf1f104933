"""Tier 1: the image and latent tensor operations ComfyUI's nodes perform (resampling, outpaint padding,
mask growing), against values worked out by hand from ComfyUI's definitions."""

from __future__ import annotations

import torch

from lienzo.pipelines.tensor_images import grow_mask, pad_for_outpaint, resample, target_size


def test_outpaint_padding_is_grey_with_a_quadratic_feather_from_padded_sides_only():
    pixels = torch.full((1, 3, 20, 20), 0.5)
    padded, mask = pad_for_outpaint(pixels, left=8, top=0, right=0, bottom=0, feathering=4)
    assert padded.shape == (1, 3, 20, 28) and mask.shape == (1, 1, 20, 28)
    assert torch.equal(padded[..., :8], torch.zeros(1, 3, 20, 8)) and torch.equal(padded[..., 8:], pixels)
    assert torch.equal(mask[..., :8], torch.ones(1, 1, 20, 8))
    expected = torch.tensor([1.0, 0.5625, 0.25, 0.0625, 0.0])
    assert torch.allclose(mask[0, 0, :, 8:13], expected.expand(20, 5))
    assert torch.equal(mask[..., 13:], torch.zeros(1, 1, 20, 15))
    _, unfeathered = pad_for_outpaint(pixels, left=8, top=0, right=0, bottom=8, feathering=10)
    assert torch.equal(unfeathered[0, 0, :20, 8:], torch.zeros(20, 20))


def test_the_far_padded_side_counts_distance_from_the_edge_itself():
    _, mask = pad_for_outpaint(torch.zeros(1, 3, 20, 20), left=0, top=0, right=8, bottom=0, feathering=4)
    assert torch.allclose(mask[0, 0, 0, 16:20], torch.tensor([0.0, 0.0625, 0.25, 0.5625]))


def test_resampling_crops_the_centre_to_the_new_aspect_and_keeps_it_for_a_zero_side():
    samples = torch.arange(32, dtype=torch.float32).reshape(1, 1, 4, 8)
    cropped = resample(samples, 4, 4, "nearest-exact", "center")
    assert torch.equal(cropped, samples[..., 2:6])
    assert target_size(samples, 0, 2) == (4, 2) and target_size(samples, 16, 0) == (16, 8)


def test_grow_mask_dilates_by_a_box():
    mask = torch.zeros(1, 1, 7, 7)
    mask[..., 3, 3] = 0.7
    grown = grow_mask(mask, 3)
    assert torch.equal(grown[0, 0, 2:5, 2:5], torch.ones(3, 3)) and grown.sum() == 9
    assert torch.equal(grow_mask(mask, 0), mask.round())
