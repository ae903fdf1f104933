"""LoRA / LyCORIS training: the saved file reads back as the trained deltas, diffusers draws the same latents
with it, and `lienzo train lora` trains, resumes, samples and refuses bad input."""

from __future__ import annotations

import errno

import pytest
import torch
from safetensors import safe_open

import lienzo
import lienzo.training.lora
from lienzo.cli import main
from lienzo.diffusion import Conditioning
from lienzo.io.formats import write_safetensors
from lienzo.pipelines.generation import generate_latents
from lienzo.pipelines.loras import resolve_lora
from lienzo.recipes.fine_tuning import write_concept_folder
from lienzo.training.gradient_checkpointing import checkpoint_unet
from lienzo.training.lora import adapter_state_dict
from lienzo.training.lora_network import NETWORKS, NetworkConfig, text_network, unet_network
from test_generate_parity import TOLERANCE, lienzo_setup, reference_latents, reference_pipeline
from tiny_models import tiny_pipeline_folder


def trained_networks(pipe, config: NetworkConfig, seed: int = 0) -> dict:
    """Networks over the pipeline's UNet and text encoder with random parts, as if trained."""
    torch.manual_seed(seed)
    networks = {
        "unet": unet_network(pipe.unet, config),
        "text_encoder": text_network(pipe.text_encoders[0], config),
    }
    with torch.no_grad():
        for network in networks.values():
            for name, param in network.named_parameters():
                if not name.endswith("dora_scale"):
                    param.copy_(torch.randn_like(param) * 0.2)
    return networks


@pytest.mark.parametrize("network", NETWORKS)
def test_the_saved_file_reads_back_as_the_trained_deltas(network, tmp_path):
    trained = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    config = NetworkConfig(network, rank=4, alpha=2.0)
    networks = trained_networks(trained, config)
    path = tmp_path / f"{network}.safetensors"
    write_safetensors(path, adapter_state_dict(networks, trained.spec))
    fresh = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    loaded = resolve_lora(fresh, path)
    patches = {("unet", p.params[0]): p for p in loaded.unet} | {
        ("text_encoder", p.params[0]): p for p in loaded.texts[0]
    }
    expected_count = sum(len(n.named_adapters()) for n in networks.values())
    assert len(patches) == expected_count
    bases = {"unet": fresh.unet, "text_encoder": fresh.text_encoders[0]}
    for component, net in networks.items():
        for name, adapter in net.named_adapters().items():
            original = bases[component].get_parameter(f"{name}.weight")
            with torch.no_grad():
                ours = adapter.delta(original.float())
                theirs = patches[(component, f"{name}.weight")].delta(original.float())
            assert ours.abs().max() > 1e-3
            torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)
    with safe_open(path, "pt") as handle:
        convs = [key for key in handle.keys() if key.endswith("resnets_0_conv1.alpha")]
    assert bool(convs) == config.covers_convs
    originals = {name: fresh.unet.get_parameter(name) for name, _ in fresh.unet.named_parameters()}
    networks["unet"].remove()
    assert {name: param for name, param in trained.unet.named_parameters()}.keys() == originals.keys()
    for name, param in trained.unet.named_parameters():
        assert param is originals[name], name


def test_diffusers_draws_the_same_latents_with_the_trained_file(tmp_path):
    trained = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
    networks = trained_networks(trained, NetworkConfig("lora", rank=4, alpha=2.0), seed=1)
    path = tmp_path / "star.safetensors"
    write_safetensors(path, adapter_state_dict(networks, trained.spec))
    reference = reference_pipeline("sd1")
    reference.load_lora_weights(str(path), adapter_name="star")
    reference.fuse_lora(lora_scale=1.0)
    pipe, options = lienzo_setup("sd1")
    plain = generate_latents(pipe, options, progress=False)
    pipe.loras.add(path, 1.0)
    ours = generate_latents(pipe, options, progress=False)
    expected = reference_latents(reference, pipe, options)
    assert (plain - ours).abs().max() > 100 * TOLERANCE
    assert (ours - expected).abs().max() < TOLERANCE


@pytest.fixture(scope="module")
def stars(tmp_path_factory):
    """Eight captioned star scenes."""
    return write_concept_folder(tmp_path_factory.mktemp("stars"), "star", 8)


def test_the_command_trains_samples_resumes_and_the_file_loads(stars, tmp_path, capsys):
    out = tmp_path / "star.safetensors"
    common = ["train", "lora", "--data", str(stars), "--out", str(out), "--batch-size", "2", "--quiet"]
    sampling = ["--sample-every", "2", "--sample-prompt", "a red star on the left on a blue background"]
    assert main([*common, "--steps", "2", "--save-every", "1", *sampling]) == 0
    run = tmp_path / "star-training"
    assert out.is_file() and (run / "loss.png").is_file() and (run / "samples" / "step_000002.png").is_file()
    with safe_open(out, "pt") as handle:
        metadata = handle.metadata()
        keys = list(handle.keys())
    assert metadata["ss_network_module"] == "networks.lora" and metadata["ss_network_dim"] == "8"
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_steps"] == "2"
    assert "a red star" in metadata["ss_tag_frequency"] or "star" in metadata["ss_tag_frequency"]
    assert all(key.startswith("lora_unet_") for key in keys)
    assert main([*common, "--steps", "3"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([*common, "--steps", "3", "--resume"]) == 0
    assert [line.split(",")[0] for line in (run / "loss.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
    with safe_open(out, "pt") as handle:
        assert handle.metadata()["ss_steps"] == "3"
    pipe = lienzo.load()
    before = pipe.unet.get_parameter("input_blocks.3.1.proj_in.weight").clone()
    pipe.loras.add(out, 1.0)
    assert not torch.equal(before, pipe.unet.get_parameter("input_blocks.3.1.proj_in.weight"))


def test_bad_input_stops_before_any_file_is_written(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "runs" / "star.safetensors"
    assert main(["train", "lora", "--data", str(empty), "--out", str(out), "--quiet"]) == 1
    assert "holds no images" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.*"))
    sdxl = tiny_pipeline_folder("sdxl")
    assert main(["train", "lora", "--data", str(empty), "--out", str(out), "--model", str(sdxl)]) == 1
    assert "supports SD 1.x and SD 2.x" in capsys.readouterr().err
    assert main(["train", "lora", "--data", str(empty), "--out", str(tmp_path / "x.ckpt")]) == 1
    assert "must end in .safetensors" in capsys.readouterr().err


def test_a_full_disk_is_a_clear_error_and_the_saved_state_resumes(stars, tmp_path, monkeypatch, capsys):
    out = tmp_path / "star.safetensors"
    arguments = ["train", "lora", "--data", str(stars), "--out", str(out), "--batch-size", "2", "--quiet"]

    def full_disk(path, *_, **__):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(lienzo.training.lora, "write_safetensors", full_disk)
    assert main([*arguments, "--steps", "1"]) == 1
    assert "disk is full" in capsys.readouterr().err and not out.exists()
    state = tmp_path / "star-training" / "training_state.pt"
    assert torch.load(state, weights_only=True)["step"] == 1
    monkeypatch.undo()
    assert main([*arguments, "--steps", "2", "--resume"]) == 0 and out.is_file()


def test_gradient_checkpointing_gives_the_same_gradients():
    def gradients(checkpointed: bool) -> dict[str, torch.Tensor]:
        pipe = lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32)
        if checkpointed:
            checkpoint_unet(pipe.unet)
            assert all(
                "forward" in vars(block) for block in (*pipe.unet.input_blocks, pipe.unet.middle_block)
            )
        network = trained_networks(pipe, NetworkConfig("locon", rank=2))["unet"]
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, 8, 8, generator=generator)
        context = torch.randn(2, 77, 32, generator=generator)
        network(x, torch.tensor([10.0, 500.0]), Conditioning(context)).square().mean().backward()
        return {name: param.grad.clone() for name, param in network.named_parameters()}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6)
