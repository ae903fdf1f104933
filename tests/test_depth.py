"""Depth-to-image: depth conditioning as diffusers computes it, output shapes, the depth map's effect."""

from __future__ import annotations

from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

import lienzo
from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.depth import depth_conditioning, load_depth_map
from lienzo.pipelines.options import HiresOptions
from tiny_models import tiny_pipeline_folder

FAST = {"steps": 4, "seed": 7, "sampler": "euler", "cfg": 5.0}


def gradient(size: tuple[int, int], horizontal: bool) -> Image.Image:
    """An 8-bit depth map that ramps from black to white across or down the image."""
    width, height = size
    ramp = np.linspace(0, 255, width if horizontal else height).astype(np.uint8)
    values = np.tile(ramp, (height, 1)) if horizontal else np.tile(ramp[:, None], (1, width))
    return Image.fromarray(values)


def photo(size: tuple[int, int]) -> Image.Image:
    generator = torch.Generator().manual_seed(0)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=generator).byte().numpy())


@pytest.fixture(scope="module")
def pipe():
    return lienzo.load(tiny_pipeline_folder("sd2-depth"), device="cpu", dtype=torch.float32)


def test_depth_conditioning_matches_diffusers():
    depth = torch.rand(1, 37, 45, generator=torch.Generator().manual_seed(1)) * 7 + 3
    fake_pipeline = SimpleNamespace(vae_scale_factor=2)
    image = torch.zeros(1, 3, 32, 48)
    expected = diffusers.StableDiffusionDepth2ImgPipeline.prepare_depth_map(
        fake_pipeline, image, depth, 1, False, torch.float32, torch.device("cpu")
    )
    ours = depth_conditioning(depth[:, None], (16, 24))
    assert ours.shape == (1, 1, 16, 24)
    assert (ours - expected).abs().max() < 1e-6
    assert ours.min() == -1 and ours.max() == 1


def test_flat_depth_gives_zeros_and_16_bit_maps_keep_their_precision():
    assert torch.equal(depth_conditioning(torch.full((1, 1, 8, 8), 5.0), (4, 4)), torch.zeros(1, 1, 4, 4))
    deep = Image.fromarray(np.array([[0, 1000], [40000, 65535]], dtype=np.uint16))
    assert load_depth_map(deep)[0, 0, 1, 0] == 40000


def test_depth2img_shapes_and_the_depth_map_changes_the_result(pipe):
    image = photo((32, 24))
    across = pipe.depth2img(image, gradient((32, 24), True), "a room", **FAST)
    again = pipe.depth2img(image, gradient((32, 24), True), "a room", **FAST)
    down = pipe.depth2img(image, gradient((64, 48), False), "a room", **FAST)
    assert across[0].size == (32, 24) and across[0].info["lienzo"]["mode"] == "depth2img"
    assert across[0].info["lienzo"]["strength"] == 0.8
    assert across[0].tobytes() == again[0].tobytes()
    assert across[0].tobytes() != down[0].tobytes()


def test_depth2img_with_hires_fix_gives_the_depth_map_at_the_larger_size(pipe):
    seen = []
    image, depth = photo((32, 24)), gradient((32, 24), True)
    hires = HiresOptions(scale=2.0, strength=0.6)
    result = pipe.depth2img(image, depth, "a room", hires=hires, callback=seen.append, **FAST)[0]
    factor = pipe.spec.vae.downscale_factor
    stages = {state["stage"]: tuple(factor * side for side in state["x"].shape[-2:]) for state in seen}
    assert stages == {"base": (24, 32), "hires": (48, 64)}
    assert result.size == (64, 48) and result.info["lienzo"]["hires"]["strength"] == 0.6
    flat = pipe.depth2img(image, torch.zeros(24, 32), "a room", hires=hires, **FAST)[0]
    assert flat.tobytes() != result.tobytes()


def test_depth2img_batch_item_follows_its_seed(pipe):
    image, depth = photo((32, 32)), gradient((32, 32), True)
    batch = pipe.depth2img(image, depth, "a room", batch_size=2, **FAST)
    single = pipe.depth2img(image, depth, "a room", **{**FAST, "seed": FAST["seed"] + 1})
    assert len(batch) == 2 and batch[1].tobytes() == single[0].tobytes()


def test_depth2img_rejects_bad_input(pipe, tmp_path):
    image, depth = photo((32, 32)), gradient((32, 32), True)
    with pytest.raises(InvalidArgumentError, match="depth model"):
        lienzo.load(tiny_pipeline_folder("sd1"), device="cpu", dtype=torch.float32).depth2img(
            image, depth, "a room", **FAST
        )
    with pytest.raises(InvalidArgumentError, match=r"\[0, 1\]"):
        pipe.depth2img(image, depth, "a room", strength=1.2, **FAST)
    broken = tmp_path / "depth.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        pipe.depth2img(image, broken, "a room", **FAST)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        pipe.depth2img(image, tmp_path / "missing.png", "a room", **FAST)


def diffusers_depth2img_latents(
    image: Image.Image, depth: torch.Tensor, sigmas: torch.Tensor, strength: float
):
    """Latents from diffusers' StableDiffusionDepth2ImgPipeline: Euler over the same sigmas and seed.

    Its VAE posterior is read at the mean (diffusers would draw a sample), so the seeded generator
    gives the initial noise only, as in lienzo.
    """
    reference = diffusers.StableDiffusionDepth2ImgPipeline.from_pretrained(
        tiny_pipeline_folder("sd2-depth"), depth_estimator=None, feature_extractor=None
    )
    reference.scheduler = diffusers.EulerDiscreteScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    set_timesteps, encode = reference.scheduler.set_timesteps, reference.vae.encode
    reference.scheduler.set_timesteps = lambda steps, device=None: set_timesteps(
        sigmas=sigmas.tolist(), device=device
    )

    def encode_to_mean(pixels, *args, **kwargs):
        mean = encode(pixels).latent_dist.mean
        return SimpleNamespace(latent_dist=SimpleNamespace(sample=lambda generator=None: mean))

    reference.vae.encode = encode_to_mean
    return reference(
        "a room",
        image=image,
        depth_map=depth,
        strength=strength,
        num_inference_steps=len(sigmas) - 1,
        guidance_scale=FAST["cfg"],
        generator=torch.Generator().manual_seed(FAST["seed"]),
        output_type="latent",
    ).images


def test_depth2img_latents_match_diffusers(pipe):
    image, depth = photo((32, 32)), gradient((32, 32), True)
    captured = {}
    pipe.depth2img(image, depth, "a room", callback=captured.update, **FAST)
    sigmas = lienzo.diffusion.get_sigmas(
        "karras", FAST["steps"], lienzo.diffusion.ModelSampling.from_config()
    )
    theirs = diffusers_depth2img_latents(image, load_depth_map(depth)[0], sigmas, 0.8)
    ours = captured["denoised"]  # Euler's last step lands on its x0 estimate
    error, scale = (ours - theirs).abs().max().item(), theirs.abs().max().item()
    print(f"sd2-depth depth2img latents: max abs error {error:.2e}, largest value {scale:.2f}")
    assert error < 1e-5 * scale


def test_inpaint_refuses_a_depth_model(pipe):
    image, mask = photo((32, 32)), Image.new("L", (32, 32), 255)
    with pytest.raises(InvalidArgumentError, match="inpaint model"):
        pipe.inpaint(image, mask, "a room", **FAST)
