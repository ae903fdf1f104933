"""Fine-tuning data: captioned folders, repeats, kohya N_name folders, shuffled tags, buckets, latent cache,
and the bad inputs that must stop a run before it writes anything."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lienzo.errors import InvalidArgumentError, ModelNotFoundError
from lienzo.models.vae import AutoencoderKL, VAEConfig
from lienzo.training.batch import collate
from lienzo.training.buckets import bucket_resolutions, nearest_bucket
from lienzo.training.captioned_dataset import CaptionedDataset, DataConfig, image_tensor, shuffle_tags
from lienzo.training.latent_cache import cache_latents


def write_image(folder: Path, stem: str, size=(32, 32), caption: str | None = "a red star", colour="red"):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(folder / f"{stem}.png")
    if caption is not None:
        (folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")


def test_items_are_images_in_range_with_their_captions(tmp_path):
    write_image(tmp_path, "a", caption="first caption")
    write_image(tmp_path, "b", size=(48, 32), caption="second caption", colour="blue")
    dataset = CaptionedDataset(DataConfig(tmp_path, resolution=16), batch_size=1)
    items = [dataset[index] for index in range(dataset.epoch_samples)]
    assert sorted(item["caption"] for item in items) == ["first caption", "second caption"]
    for item in items:
        assert item["image"].shape == (3, 16, 16)
        assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0


def test_repeats_and_kohya_folders_weight_the_epoch(tmp_path):
    write_image(tmp_path, "plain", caption="plain")
    write_image(tmp_path / "3_star", "starry", caption="starry")
    dataset = CaptionedDataset(DataConfig(tmp_path, resolution=16, repeats=2), batch_size=1)
    counts = Counter(dataset[index]["caption"] for index in range(dataset.epoch_samples))
    assert counts == {"plain": 2, "starry": 3}
    assert dataset.tag_frequency() == {tmp_path.name: {"plain": 1}, "3_star": {"starry": 1}}


def test_epochs_are_reshuffled_but_reproducible(tmp_path):
    for index in range(6):
        write_image(tmp_path, f"{index}", caption=f"caption {index}")
    config = DataConfig(tmp_path, resolution=16, seed=3)
    first = CaptionedDataset(config, batch_size=2)
    again = CaptionedDataset(config, batch_size=2)
    order = [first.example_index(index) for index in range(12)]
    assert order == [again.example_index(index) for index in range(12)]
    assert sorted(order[:6]) == list(range(6)) and sorted(order[6:]) == list(range(6))
    assert order[:6] != order[6:]


def test_shuffled_tags_keep_the_leading_tokens():
    rng = np.random.default_rng(0)
    caption = "star, red, large, left, blue background"
    results = {shuffle_tags(caption, 2, rng) for _ in range(30)}
    assert len(results) > 1
    for result in results:
        tags = result.split(", ")
        assert tags[:2] == ["star", "red"] and sorted(tags) == sorted(caption.split(", "))


def test_buckets_follow_kohya_and_batches_never_mix_sizes(tmp_path):
    buckets = bucket_resolutions(512)
    assert (512, 512) in buckets and (576, 448) in buckets and (448, 576) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    assert nearest_bucket((1000, 500), buckets)[0] > nearest_bucket((1000, 500), buckets)[1]
    for index in range(3):
        write_image(tmp_path, f"wide{index}", size=(96, 48))
        write_image(tmp_path, f"tall{index}", size=(48, 96))
    dataset = CaptionedDataset(
        DataConfig(tmp_path, resolution=64, buckets=True, bucket_step=16), batch_size=2
    )
    assert len(dataset.bucket_counts()) == 2
    for batch in range(dataset.batches_per_epoch * 2):
        stacked = collate([dataset[batch * 2 + slot] for slot in range(2)])["image"]
        assert stacked.shape[2] != stacked.shape[3]


def test_latents_are_cached_once_per_file_content_and_size(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_image(data, "a")
    write_image(data, "b", colour="blue")
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)).eval()
    dataset = CaptionedDataset(DataConfig(data, resolution=16), batch_size=1)
    cache_latents(dataset, vae, cache)
    files = sorted(cache.iterdir())
    assert len(files) == 2 and all("_16x16_" in path.name for path in files)
    moments = dataset[0]["image"]
    assert moments.shape == (2 * vae.config.embed_dim, 8, 8)
    chosen = dataset.examples[dataset.example_index(0)]
    expected = vae.encode(image_tensor(chosen.path, chosen.size).unsqueeze(0))
    assert torch.allclose(moments[: vae.config.embed_dim], expected.mean[0], atol=1e-5)
    stamps = [path.stat().st_mtime_ns for path in files]
    cache_latents(CaptionedDataset(DataConfig(data, resolution=16), batch_size=1), vae, cache)
    assert [path.stat().st_mtime_ns for path in sorted(cache.iterdir())] == stamps
    cache_latents(CaptionedDataset(DataConfig(data, resolution=24), batch_size=1), vae, cache)
    assert len(list(cache.iterdir())) == 4


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        CaptionedDataset(DataConfig(tmp_path / "missing"), batch_size=1)
    with pytest.raises(InvalidArgumentError, match="holds no images"):
        CaptionedDataset(DataConfig(tmp_path), batch_size=1)
    write_image(tmp_path, "good")
    write_image(tmp_path, "lonely", caption=None)
    with pytest.raises(InvalidArgumentError, match=r"1 image\(s\) .* no caption file: lonely.png"):
        CaptionedDataset(DataConfig(tmp_path), batch_size=1)
    (tmp_path / "lonely.txt").write_text("now captioned")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.txt").write_text("a caption")
    with pytest.raises(InvalidArgumentError, match="cannot be read: broken.png"):
        CaptionedDataset(DataConfig(tmp_path), batch_size=1)
