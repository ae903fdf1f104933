"""Is the built-in VAE a general shape codec? Round trips (encode, decode) of the reserved-shape test scenes
and of base-world scenes, scored by lienzo.worlds.scorer; with `--tune-steps N`, first run the recipe's
decoder generalisation stage (decoder alone, encoder frozen, so the latents and the trained UNet stay
valid) on generic procedural shapes mixed with base-world scenes, then measure again; with `--scratch`, train
a new VAE of the recipe's architecture (latent channels and downsampling levels as given) from scratch on
that mix, both VAE stages of the recipe, and measure it (a candidate for a future built-in model: its
latents differ, so the shipped UNet cannot use it).

    python bench/vae_codec.py                                   # round trips of the built-in VAE
    python bench/vae_codec.py --tune-steps 300 --folder RUN     # + the decoder generalisation stage
    python bench/vae_codec.py --oracle 150 --base 0             # diagnosis only: decoder on star scenes
    python bench/vae_codec.py --checkpoint RUN/training_state.pt --weights VAE.safetensors --generate 50
                                  # a run's VAE as shipped (fp16), its round trips and paired generation
    python bench/vae_codec.py --scratch RUN --latent-channels 16  # a new VAE on world + generic shapes
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lienzo.io.formats import read_state_dict, write_safetensors
from lienzo.io.keymaps.vae import vae_diffusers_to_ldm, vae_ldm_to_diffusers
from lienzo.models.vae import AutoencoderKL
from lienzo.pipelines.images import images_to_tensor, tensor_to_images
from lienzo.pipelines.pipeline import load
from lienzo.recipes.shapes import ShapesRecipe, generalise_decoder, train_vae, tune_decoder
from lienzo.recipes.shapes_data import RandomCrops
from lienzo.training import VAEObjective, train
from lienzo.training.checkpoint import load_training_state
from lienzo.worlds.concept_data import concept_scenes, concept_test_scenes
from lienzo.worlds.evaluate import evaluation_prompts
from lienzo.worlds.scorer import score
from lienzo.worlds.shapes import Scene, caption, render, sample_scene

BASE_SEED = 2002


def base_scenes(count: int) -> list[Scene]:
    """`count` base-world scenes (one or two objects, held-out pairs included) apart from training seeds."""
    rng = np.random.default_rng(BASE_SEED)
    return [sample_scene(rng, allow_held_out=True) for _ in range(count)]


@torch.no_grad()
def round_trip_accuracy(vae, scenes: list[Scene], batch_size: int = 20) -> float:
    """Share of `scenes` whose full caption the scorer matches after encode (posterior mean) and decode."""
    matched = []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        images = images_to_tensor([render(scene) for scene in chunk])
        decoded = tensor_to_images(vae.decode(vae.encode(images).mean).clamp(-1, 1))
        matched += [score(caption(s), image).matched for s, image in zip(chunk, decoded, strict=True)]
    return sum(matched) / len(matched)


def report(vae, label: str, count: int, base_count: int) -> dict[str, float]:
    """Print and return the star, heart and base-world round trips (the reserved shapes also by size)."""
    started = time.perf_counter()
    figures = {}
    for shape in ("star", "heart"):
        scenes = concept_test_scenes(shape, count)
        figures[shape] = round_trip_accuracy(vae, scenes)
        for size in ("small", "large"):
            sized = [scene for scene in scenes if scene.objects[0].size == size]
            figures[f"{size} {shape}"] = round_trip_accuracy(vae, sized) if sized else float("nan")
    if base_count:
        figures["base"] = round_trip_accuracy(vae, base_scenes(base_count))
    text = ", ".join(f"{name} {value:.0%}" for name, value in figures.items())
    print(f"{label}: {text} ({time.perf_counter() - started:.0f} s)", flush=True)
    return figures


def tune(vae, steps: int, *, generic_share: float, folder: Path, lr: float) -> None:
    """The recipe's decoder generalisation stage for `steps` into `folder` (resumable, a checkpoint every
    25 steps)."""
    recipe = ShapesRecipe(generic_share=generic_share).with_decoder_generalisation(steps, lr)
    stage = replace(recipe.decoder_generalisation, checkpoint_every=25)
    started = time.perf_counter()
    generalise_decoder(replace(recipe, decoder_generalisation=stage), vae, folder, torch.device("cpu"), False)
    print(f"tuned {steps} steps in {time.perf_counter() - started:.0f} s", flush=True)


class StarScenes:
    """Diagnosis only, never shipped: training-seed star scenes (apart from the test scenes), as items."""

    def __getitem__(self, index: int) -> dict[str, object]:
        scene = concept_scenes("star", 1, seed=10_000 + index)[0]
        return {"image": images_to_tensor([render(scene)])[0], "caption": ""}


def oracle(vae, steps: int, folder: Path) -> None:
    """Fine-tune the decoder alone on star scenes themselves: if even this leaves the test stars
    unreadable, the frozen encoder's latents have lost them and no decoder can bring them back."""
    recipe = ShapesRecipe()
    stage = recipe.with_decoder_generalisation(steps).decoder_generalisation
    config = replace(stage, checkpoint_every=25, progress_bar=False)
    objective = VAEObjective(vae, reconstruction="l1", train_encoder=False)
    train(config, objective, RandomCrops(StarScenes(), recipe.vae_crop, seed=9), folder, resume=True)
    vae.eval().requires_grad_(False)


def scratch(
    folder: Path,
    latent_channels: int,
    levels: int,
    generic_share: float,
    vae_steps: int | None = None,
    edge_weight: float = 0.0,
    decoder_steps: int | None = None,
) -> AutoencoderKL:
    """A new VAE by the recipe's VAE stages (MSE + KL, then the decoder alone with L1), trained from scratch
    on base-world scenes mixed with generic shapes (never a star or heart); resumable in `folder`, and a
    finished first stage extends to a larger `vae_steps` on resume. `folder` is laid out as a recipe run's
    folder, so `lienzo train recipe --resume` can go on from it with the same recipe."""
    recipe = ShapesRecipe().with_codec_latent(latent_channels, generic_share)
    ch_mult = (*recipe.vae.ch_mult[: levels - 1], recipe.vae.ch_mult[-1])
    recipe = replace(
        recipe,
        vae=replace(recipe.vae, ch_mult=ch_mult),
        vae_training=replace(recipe.vae_training, steps=vae_steps or recipe.vae_training.steps),
        decoder_training=replace(
            recipe.decoder_training, steps=decoder_steps or recipe.decoder_training.steps
        ),
        decoder_edge_weight=edge_weight,
    )
    cpu = torch.device("cpu")
    started = time.perf_counter()
    vae = train_vae(recipe, folder / "vae", cpu, False)
    steps = recipe.vae_training.steps
    print(f"vae stage: {steps} steps in {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    vae = tune_decoder(recipe, vae, folder / "decoder", cpu, False)
    print(f"decoder stage: {recipe.decoder_training.steps} steps in {time.perf_counter() - started:.0f} s")
    return vae


def diffusers_weights(vae) -> dict[str, torch.Tensor]:
    """The VAE's weights as shipped: diffusers keys, float16."""
    return vae_ldm_to_diffusers({key: value.half() for key, value in vae.state_dict().items()}, vae.config)


def export_checkpoint(vae, checkpoint: Path, path: Path) -> None:
    """Write the VAE of a tuning run's training checkpoint as diffusers-format float16 weights."""
    module = load_training_state(checkpoint)["modules"]["vae"]
    tuned = copy.deepcopy(vae)
    tuned.load_state_dict({key.removeprefix("vae."): value for key, value in module.items()})
    write_safetensors(path, diffusers_weights(tuned), {"format": "pt"})


def load_weights(vae, path: Path):
    """A copy of `vae` carrying the diffusers-format VAE weights at `path`."""
    tuned = copy.deepcopy(vae)
    tuned.load_state_dict(vae_diffusers_to_ldm(read_state_dict(path)))
    return tuned.eval().requires_grad_(False)


def paired_generation(weights: Path, count: int) -> tuple[float, float]:
    """One-object accuracy of the built-in model (as `lienzo eval shapes --prompts count` runs its single
    category: default settings and dtype, seeds 0..count-1) with its VAE and with the VAE at `weights`.
    The decoder does not steer sampling, so both decode the very same latents."""
    pipe = load()
    tuned = load_weights(pipe.vae, weights)
    latents: list[torch.Tensor] = []
    decode = pipe.vae.decode

    def recording_decode(z: torch.Tensor) -> torch.Tensor:
        latents.append(z.clone())
        return decode(z)

    pipe.vae.decode = recording_decode
    prompts = evaluation_prompts(count, 0, "single")
    before, after = [], []
    for seed, prompt in enumerate(prompts):
        image = pipe.generate(prompt, seed=seed, progress=False)[0]
        before.append(score(prompt, image).matched)
        with torch.inference_mode():
            after.append(score(prompt, tensor_to_images(tuned.decode(latents[-1]))[0]).matched)
    return sum(before) / count, sum(after) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=40, help="star and heart test scenes")
    parser.add_argument("--base", type=int, default=100, help="base-world scenes")
    parser.add_argument("--tune-steps", type=int, default=0)
    parser.add_argument("--oracle", type=int, default=0, help="diagnosis: decoder steps on star scenes")
    parser.add_argument("--generic-share", type=float, default=0.5)
    parser.add_argument("--scratch", type=Path, help="train a new VAE from scratch in this folder instead")
    parser.add_argument("--latent-channels", type=int, default=4, help="with --scratch")
    parser.add_argument("--levels", type=int, default=4, help="with --scratch: 4 = 8x downsampling, 3 = 4x")
    parser.add_argument("--vae-steps", type=int, help="with --scratch: first-stage steps")
    parser.add_argument("--decoder-steps", type=int, help="with --scratch: decoder-stage steps")
    parser.add_argument(
        "--edge-weight", type=float, default=0.0, help="with --scratch: the decoder stage's edge weight"
    )
    parser.add_argument("--lr", type=float, default=2e-4, help="the tuning's learning rate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a loaded CPU)")
    parser.add_argument("--save", type=Path, help="write the tuned VAE's diffusers weights (float16) here")
    parser.add_argument("--skip-before", action="store_true")
    parser.add_argument("--folder", type=Path, help="the tuning run's folder (default: a new temporary one)")
    parser.add_argument("--checkpoint", type=Path, help="export a tuning checkpoint to --weights first")
    parser.add_argument("--weights", type=Path, help="measure these diffusers-format VAE weights")
    parser.add_argument(
        "--generate", type=int, default=0, help="one-object prompts to generate, before/after"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.scratch:
        vae = scratch(
            args.scratch,
            args.latent_channels,
            args.levels,
            args.generic_share,
            args.vae_steps,
            args.edge_weight,
            args.decoder_steps,
        )
        report(
            vae,
            f"new VAE, {args.latent_channels} latent channels, {args.levels} levels",
            args.scenes,
            args.base,
        )
        return
    vae = load(dtype=torch.float32).vae.eval()
    if not args.skip_before:
        report(vae, "built-in VAE", args.scenes, args.base)
    if args.tune_steps:
        tune(
            vae,
            args.tune_steps,
            generic_share=args.generic_share,
            folder=args.folder or Path(tempfile.mkdtemp()),
            lr=args.lr,
        )
        report(vae, "decoder tuned", args.scenes, args.base)
        if args.save:
            write_safetensors(args.save, diffusers_weights(vae), {"format": "pt"})
    if args.oracle:
        oracle(vae, args.oracle, args.folder or Path(tempfile.mkdtemp()))
        report(vae, "decoder tuned on star scenes (diagnosis only)", args.scenes, args.base)
    if args.checkpoint:
        export_checkpoint(vae, args.checkpoint, args.weights)
    if args.weights:
        report(load_weights(vae, args.weights), f"VAE of {args.weights}", args.scenes, args.base)
        if args.generate:
            started = time.perf_counter()
            before, after = paired_generation(args.weights, args.generate)
            print(
                f"one-object prompts ({args.generate}): built-in VAE {before:.0%}, {args.weights} {after:.0%}"
                f" ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
