"""Training on a folder of images with caption files: reading, cropping, and refusing broken images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from lienzo.errors import InvalidArgumentError, ModelNotFoundError
from lienzo.training.image_folder import ImageFolderDataset, center_crop_resize


def write_image(path, size=(40, 24), colour=(255, 0, 0)):
    Image.new("RGB", size, colour).save(path)


def test_images_come_with_their_captions(tmp_path):
    write_image(tmp_path / "a.png", colour=(255, 0, 0))
    (tmp_path / "a.txt").write_text("  a red square \n")
    write_image(tmp_path / "b.jpg", colour=(0, 0, 255))
    (tmp_path / "notes.md").write_text("not an image")
    dataset = ImageFolderDataset(tmp_path, resolution=16)
    assert len(dataset) == 2
    item = dataset[0]
    assert set(item) == {"image", "caption"}
    image, caption = item["image"], item["caption"]
    assert caption == "a red square"
    assert image.shape == (3, 16, 16)
    torch.testing.assert_close(image[:, 8, 8], torch.tensor([1.0, -1.0, -1.0]))
    assert dataset[1]["caption"] == ""
    assert dataset[1]["image"][2, 8, 8] > 0.9


def test_center_crop_keeps_the_middle_of_the_long_side():
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    image.paste((255, 255, 255), (10, 0, 20, 10))
    square = center_crop_resize(image, 10)
    assert square.size == (10, 10)
    assert square.getpixel((5, 5)) == (255, 255, 255)


def test_unreadable_images_are_listed_before_training(tmp_path):
    write_image(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = tmp_path / "cut.jpg"
    write_image(good, size=(64, 64))
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InvalidArgumentError, match=r"2 image\(s\).*broken\.png.*cut\.jpg.*fix or remove"):
        ImageFolderDataset(tmp_path)


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "absent")
    with pytest.raises(InvalidArgumentError, match="no images"):
        ImageFolderDataset(tmp_path)
