"""TAESD's tiny decoder: the published weight layout, loading (plain and `decoder.`-prefixed keys), refusal
of other files, and the filmstrip it decodes from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lienzo.cli import main
from lienzo.errors import InvalidArgumentError
from lienzo.io import write_safetensors
from lienzo.io.taesd_files import load_tiny_decoder
from lienzo.models.taesd import TinyDecoder

BLOCKS = (3, 4, 5, 8, 9, 10, 13, 14, 15, 18)
PUBLISHED_KEYS = {"1.weight", "1.bias", "7.weight", "12.weight", "17.weight", "19.weight", "19.bias"} | {
    f"{block}.conv.{conv}.{kind}" for block in BLOCKS for conv in (0, 2, 4) for kind in ("weight", "bias")
}
"""taesd_decoder.safetensors' keys: an nn.Sequential whose upsampling convolutions have no bias."""


@pytest.fixture(scope="module")
def decoder() -> TinyDecoder:
    torch.manual_seed(0)
    return TinyDecoder().eval()


def test_the_decoder_has_the_published_layout_and_size(decoder):
    assert set(decoder.state_dict()) == PUBLISHED_KEYS
    assert sum(parameter.numel() for parameter in decoder.parameters()) == 1_222_531
    with torch.inference_mode():
        assert decoder.decode(torch.randn(2, 4, 5, 7)).shape == (2, 3, 40, 56)


@pytest.mark.parametrize("prefix", ["", "decoder."])
def test_weights_load_with_or_without_prefix(decoder, tmp_path, prefix):
    path = tmp_path / "taesd_decoder.safetensors"
    write_safetensors(path, {prefix + key: value for key, value in decoder.state_dict().items()})
    loaded = load_tiny_decoder(path)
    latents = torch.randn(1, 4, 6, 6)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.decode(latents), decoder.decode(latents), rtol=0, atol=0)
    assert not any(parameter.requires_grad for parameter in loaded.parameters())


def test_other_files_are_refused(decoder, tmp_path):
    other = tmp_path / "vae.safetensors"
    write_safetensors(other, {"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)})
    with pytest.raises(InvalidArgumentError, match="not a TAESD decoder"):
        load_tiny_decoder(other)
    partial = tmp_path / "partial.safetensors"
    weights = {key: value for key, value in decoder.state_dict().items() if not key.startswith("18.")}
    write_safetensors(partial, weights)
    with pytest.raises(InvalidArgumentError, match="layout"):
        load_tiny_decoder(partial)


def test_cli_filmstrip_with_the_tiny_decoder(decoder, tmp_path, monkeypatch, capsys):
    write_safetensors(tmp_path / "taesd_decoder.safetensors", decoder.state_dict())
    monkeypatch.chdir(tmp_path)
    common = ["generate", "a red circle on a blue background", "--steps", "4", "--seed", "1", "-q"]
    tiny = ["--preview-every", "2", "--preview-decoder", "taesd_decoder.safetensors"]
    assert main([*common, *tiny, "-o", "wide.png"]) == 1  # the default shapes-v2 has 16-channel latents
    assert "reads 4-channel latents but this model's have 16" in capsys.readouterr().err
    assert not Path("wide.png").exists()
    common += ["--model", "shapes-v1"]
    assert main([*common, *tiny]) == 0
    image, strip = (Path(line) for line in capsys.readouterr().out.split())
    assert strip.name.endswith("-preview.png") and Image.open(strip).width >= 2 * Image.open(image).width
    assert main([*common, "--preview-decoder", "taesd_decoder.safetensors", "-o", "no.png"]) == 1
    assert "add --preview-every" in capsys.readouterr().err and not Path("no.png").exists()
