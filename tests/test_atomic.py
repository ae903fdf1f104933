"""Atomic writes: a finished file is 0644 (not mkstemp's 0600), and a failure leaves no file behind."""

import os
import stat

import pytest
import torch
from PIL import Image

from lienzo.io.atomic import atomic_path
from lienzo.io.formats import write_safetensors
from lienzo.pipelines.output import write_png_atomically


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_png_and_safetensors_are_written_0644(tmp_path):
    write_png_atomically(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    write_safetensors(tmp_path / "w.safetensors", {"x": torch.zeros(2)})
    assert mode(tmp_path / "a.png") == 0o644
    assert mode(tmp_path / "w.safetensors") == 0o644


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "kept.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]
