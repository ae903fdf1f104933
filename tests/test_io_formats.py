"""Tensor file formats: safe reading, atomic writing, and a clear error for every damaged or unsafe file."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from lienzo.errors import (
    CorruptCheckpointError,
    InvalidArgumentError,
    ModelNotFoundError,
    UnsafeCheckpointError,
)
from lienzo.io.formats import read_safetensors_metadata, read_state_dict, write_safetensors


class RunsCode:
    """A pickle payload whose unpickling would create a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CustomClass:
    """An arbitrary class that a weights-only loader must not import."""

    def __init__(self):
        self.value = 1


def test_safetensors_round_trip_keeps_tensors_dtypes_and_metadata(tmp_path):
    torch.manual_seed(0)
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).half()}
    path = tmp_path / "weights.safetensors"
    write_safetensors(path, tensors, {"note": "hello"})
    loaded = read_state_dict(path)
    assert set(loaded) == set(tensors)
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype
        assert torch.equal(loaded[key], tensor)
    assert read_safetensors_metadata(path)["note"] == "hello"
    assert sorted(os.listdir(tmp_path)) == ["weights.safetensors"]


def test_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    with pytest.raises(TypeError):
        write_safetensors(path, {"a": torch.zeros(2)}, {"count": 1})
    assert os.listdir(tmp_path) == []


def test_pickle_checkpoint_unwraps_state_dict_and_drops_non_tensors(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2, 2), "step": 7}, "global_step": 7}, path)
    assert list(read_state_dict(path)) == ["w"]
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2, 2))


def test_missing_file_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "absent.safetensors")


def test_unsupported_extension_names_the_supported_ones(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"123")
    with pytest.raises(InvalidArgumentError, match=r"\.safetensors"):
        read_state_dict(path)


@pytest.mark.parametrize("cut", [0, 7, 40, -3])
def test_truncated_safetensors_is_corrupt(tmp_path, cut):
    whole = tmp_path / "whole.safetensors"
    write_safetensors(whole, {"a": torch.randn(16, 16)})
    data = whole.read_bytes()
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(CorruptCheckpointError, match="re-download or re-export"):
        read_state_dict(damaged)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt", ".bin"])
def test_random_bytes_are_corrupt(tmp_path, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(bytes(range(7, 250)) * 20)
    with pytest.raises(CorruptCheckpointError, match="damaged"):
        read_state_dict(path)


def test_truncated_torch_zip_is_corrupt(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save({"a": torch.randn(64)}, whole)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(CorruptCheckpointError):
        read_state_dict(damaged)


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": RunsCode(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="could run code") as caught:
        read_state_dict(path)
    assert ".safetensors" in str(caught.value) and "isolated" in str(caught.value)
    assert not marker.exists()


def test_plain_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(RunsCode(str(marker)), protocol=4))
    with pytest.raises(UnsafeCheckpointError):
        read_state_dict(path)
    assert not marker.exists()


def test_pickle_with_custom_class_is_refused(tmp_path):
    path = tmp_path / "custom.pth"
    torch.save({"w": torch.zeros(1), "extra": CustomClass()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        read_state_dict(path)
