"""Teach the built-in model a reserved shape (`star`, or `heart`) with one fine-tuning method at its default
settings, then score prompts of that shape and base-world prompts with the result loaded.

Usage: PYTHONPATH=src python bench/finetune_proof.py --method lora [--images 300] [--prompts 40] [--out DIR]
       PYTHONPATH=src python bench/finetune_proof.py --method textual-inversion [--threads 1]
       PYTHONPATH=src python bench/finetune_proof.py --method lora --model shapes-v2   # another base model
       PYTHONPATH=src python bench/finetune_proof.py --method none    # the base model as it is: the baseline
       PYTHONPATH=src python bench/finetune_proof.py --method lora --train-args "--steps 600" --out runs/s600
       PYTHONPATH=src python bench/finetune_proof.py --method lora --prior   # with class images
       PYTHONPATH=src python bench/finetune_proof.py --method lora --shape heart --out runs/heart

Renders `--images` one-object scenes of the shape (star by default) with the world's renderer and captions
into OUT/data, runs `lienzo train <method>` on them with its defaults (only --data/--out, --cache-latents,
which encodes each image once instead of every step, --token/--init-word for textual inversion, and for
DreamBooth (or with --prior) class prompts: 50 one-object base-world captions) and times it. Then it
generates `--prompts` one-object prompts of the shape (every colour, position and size, none from the
training set), the same prompts without their size word (the model picks the size; the scorer then checks
colour, shape and position) and as many one-object base-world prompts with the adapter loaded (nothing
for `none`), scores them with lienzo.worlds.scorer and prints one row of the table in docs/fine-tuning.md;
contact sheets of the three prompt sets land in OUT/<method>/
SHAPE_sheet.png, SHAPE_open_sheet.png and base_sheet.png. The last column scores the shape's test
scenes themselves after a round trip through the model's VAE: no method changes the VAE, so that is their
ceiling.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import torch

from lienzo.cli import main
from lienzo.io.embedding_files import load_embeddings
from lienzo.io.library import library_from_config
from lienzo.pipelines.images import images_to_tensor, tensor_to_images
from lienzo.pipelines.output import write_png_atomically
from lienzo.pipelines.pipeline import load
from lienzo.recipes.fine_tuning import write_concept_folder
from lienzo.worlds.concept_data import concept_prompts, concept_test_scenes
from lienzo.worlds.evaluate import contact_sheet, evaluate, evaluation_prompts
from lienzo.worlds.scorer import score as score_image
from lienzo.worlds.shapes import RESERVED_SHAPES, SIZES, caption, render

METHOD_FILES = {
    "none": "",
    "lora": "{shape}.safetensors",
    "textual-inversion": "{shape}.safetensors",
    "dreambooth": "{shape}-model",
    "dreambooth-no-prior": "{shape}-model",
    "hypernetwork": "{shape}.pt",
}
"""What each method writes, named after the shape it learns."""
METHOD_ARGUMENTS = {
    "none": [],
    "lora": [],
    "textual-inversion": ["--token", "{shape}", "--init-word", "square"],
    "dreambooth": ["--instance-prompt", "a {shape}"],
    "dreambooth-no-prior": ["--instance-prompt", "a {shape}"],
    "hypernetwork": [],
}
"""The arguments a method needs beyond its defaults, with the shape filled in."""
COMMANDS = {"dreambooth-no-prior": "dreambooth"}
"""Proof variants that run another method's command (DreamBooth without its class images)."""
CLASS_PROMPTS = 50
"""Prior preservation's class prompts: one-object base-world captions (no test prompt), in turn."""


def class_prompt_arguments(out: Path) -> list[str]:
    """`--class-prompt @FILE` with CLASS_PROMPTS base-world captions written to OUT/class_prompts.txt."""
    path = out / "class_prompts.txt"
    path.write_text("\n".join(evaluation_prompts(CLASS_PROMPTS, seed=11, kind="single")) + "\n")
    return ["--class-prompt", f"@{path}"]


def train(
    method: str, shape: str, data: Path, out: Path, model: str | None, extra: list[str], prior: bool
) -> float:
    """Run `lienzo train <method>` on `shape` with its defaults (changed by `extra`; with class images when
    `prior`); the wall-clock seconds it took."""
    started = time.perf_counter()
    arguments = [
        *(["--model", model] if model else []),
        "--data",
        str(data),
        "--out",
        str(out),
        "--cache-latents",
        "--quiet",
        *(argument.format(shape=shape) for argument in METHOD_ARGUMENTS[method]),
        *extra,
    ]
    if prior:
        arguments += class_prompt_arguments(out.parent.parent)
    status = main(["train", COMMANDS.get(method, method), *arguments])
    if status:
        raise SystemExit(f"lienzo train {method} failed with status {status}")
    return time.perf_counter() - started


def score(
    method: str,
    base: Path | None,
    adapter: Path,
    prompts: list[str],
    name: str,
    sheet: Path,
    sized: list[str] | None = None,
) -> float:
    """Share of prompts the scorer matches, generated with the adapter loaded on the model at `base` (None:
    the built-in model), or with the trained model for DreamBooth (seed i for prompt i). The split by size
    reads each scene's size from `sized` (default: the prompts themselves)."""
    pipe = load(adapter if method.startswith("dreambooth") else base)
    if method == "lora":
        pipe.loras.add(str(adapter), 1.0)
    elif method == "hypernetwork":
        pipe.hypernetworks.add(adapter, 1.0)
    elif method == "textual-inversion":
        pipe.embeddings = load_embeddings(adapter)
    generate = lambda prompt, seed: pipe.generate(prompt, seed=seed, progress=False)[0]  # noqa: E731
    report = evaluate(generate, prompts, list(range(len(prompts))))
    matched = [item.result.matched for item in report.items]
    write_png_atomically(contact_sheet(list(report.images), prompts, matched), sheet)
    attributes = report.attribute_accuracy()
    print(f"{name} prompts by attribute: " + ", ".join(f"{k} {v:.0%}" for k, v in attributes.items()))
    pairs = list(zip(sized or prompts, matched, strict=True))
    by_size = {size: [hit for prompt, hit in pairs if f" {size} " in prompt] for size in SIZES}
    print(f"{name} prompts by size: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in by_size.items()))
    return sum(matched) / len(matched)


def vae_ceiling(base: Path | None, shape: str, count: int) -> float:
    """Share of the shape's test scenes the scorer still matches after a round trip through the model's VAE
    (encode, decode): the most a method that leaves the VAE alone can reach."""
    pipe = load(base, dtype=torch.float32)
    scenes = concept_test_scenes(shape, count)
    matched = []
    for scene in scenes:
        with torch.no_grad():
            latents = pipe.vae.encode(images_to_tensor([render(scene)])).mean
            image = tensor_to_images(pipe.vae.decode(latents))[0]
        matched.append(score_image(caption(scene), image).matched)
    return sum(matched) / len(matched)


def main_proof() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=sorted(METHOD_FILES), required=True)
    parser.add_argument("--shape", choices=RESERVED_SHAPES, default="star", help="the shape to teach (star)")
    parser.add_argument("--images", type=int, default=300, help="scenes of the shape to train on")
    parser.add_argument(
        "--size", choices=SIZES, help="train on scenes of this size only (a diagnostic; default: both)"
    )
    parser.add_argument(
        "--prompts", type=int, default=40, help="prompts of the shape and base prompts to score"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/finetune_proof"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 on a busy shared machine)")
    parser.add_argument("--model", help="the base model, a name or path (default: the built-in model)")
    parser.add_argument(
        "--prior",
        action="store_true",
        help="class images (prior preservation) for lora or hypernetwork; dreambooth always has them",
    )
    parser.add_argument(
        "--train-args", default="", help='settings other than the defaults, e.g. "--steps 600 --rank 16"'
    )
    args = parser.parse_args()
    base = library_from_config(allow_paths=True).resolve("checkpoints", args.model) if args.model else None
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.out / args.method
    folder.mkdir(parents=True, exist_ok=True)
    shape = args.shape
    sizes = (args.size,) if args.size else tuple(SIZES)
    data = write_concept_folder(args.out / "data", shape, args.images, sizes=sizes)
    adapter = folder / METHOD_FILES[args.method].format(shape=shape)
    trained = args.method == "none" or adapter.exists()
    extra = shlex.split(args.train_args)
    prior = args.method == "dreambooth" or args.prior
    seconds = float("nan") if trained else train(args.method, shape, data, adapter, args.model, extra, prior)
    sized = concept_prompts(shape, args.prompts)
    accuracy = score(args.method, base, adapter, sized, shape, folder / f"{shape}_sheet.png")
    open_size = concept_prompts(shape, args.prompts, with_size=False)
    accuracy_open = score(
        args.method,
        base,
        adapter,
        open_size,
        f"{shape}, size left open",
        folder / f"{shape}_open_sheet.png",
        sized,
    )
    bases = evaluation_prompts(args.prompts, seed=3, kind="single")
    kept = score(args.method, base, adapter, bases, "base-world", folder / "base_sheet.png")
    ceiling = vae_ceiling(base, shape, args.prompts)
    print(
        f"| method | training time | {shape} accuracy | {shape} accuracy, size left open | base kept "
        f"| VAE round trip of the {shape} scenes |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    cells = [
        f"{seconds / 60:.1f} min",
        f"{accuracy:.0%}",
        f"{accuracy_open:.0%}",
        f"{kept:.0%}",
        f"{ceiling:.0%}",
    ]
    print(f"| {args.method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main_proof()
