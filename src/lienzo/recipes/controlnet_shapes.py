"""The built-in canny ControlNets' data and settings (`shapes-v1-canny`, `shapes-v2-canny`): one- and
two-object base-world scenes rendered with captions, half of them naming no position (so the edges, not
the words, place the objects); `lienzo train controlnet --control canny` makes the canny maps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lienzo.io.atomic import atomic_path
from lienzo.pipelines.control_units import ControlUnit
from lienzo.pipelines.output import write_png_atomically
from lienzo.pipelines.preprocessors import preprocess
from lienzo.worlds.scorer import score
from lienzo.worlds.shapes import Scene, article, caption, describe_object, render, sample_scene


@dataclass(frozen=True)
class ControlNetShapesRecipe:
    """Scenes, the share of captions without positions, and the training command's settings; `model` is
    the base model (None: the default built-in) and `hint_from` the ControlNet whose hint block starts
    the new one's (`--hint-from`)."""

    scenes: int = 400
    unplaced_share: float = 0.5
    steps: int = 2400
    batch_size: int = 8
    learning_rate: float = 5e-4
    caption_dropout: float = 0.2
    seed: int = 0
    model: str | None = None
    hint_from: str | None = None

    def command(self, data: Path, out: Path) -> list[str]:
        """The `lienzo train controlnet` arguments that train the ControlNet on `data` into `out`."""
        command = [
            "train", "controlnet", "--data", str(data), "--control", "canny", "--out", str(out),
            "--steps", str(self.steps), "--batch-size", str(self.batch_size),
            "--learning-rate", str(self.learning_rate), "--caption-dropout", str(self.caption_dropout),
            "--cache-latents", "--fp16", "--save-every", "100", "--seed", str(self.seed),
        ]  # fmt: skip
        if self.model is not None:
            command += ["--model", self.model]
        if self.hint_from is not None:
            command += ["--hint-from", self.hint_from]
        return command


CANNY_RECIPES: dict[str, ControlNetShapesRecipe] = {
    "shapes-v1-canny": ControlNetShapesRecipe(),
    "shapes-v2-canny": ControlNetShapesRecipe(model="shapes-v2", hint_from="shapes-v1-canny"),
}
"""The built-in canny ControlNets' recipes by name. Trained from a fresh hint block, shapes-v2's ControlNet
ignored the edges after 5 000 steps (follow rate 6 %, chance 7 %); starting its hint block from
shapes-v1-canny's, which already turns canny maps into features at the same 16x16 grid, it follows them
(docs/controlnet.md)."""


def scene_caption(scene: Scene, rng: np.random.Generator, unplaced: bool) -> str:
    """The world's caption; with `unplaced` no object's position is named."""
    return caption(scene, rng, drop_position=1.0 if unplaced else 0.3)


def write_control_scenes(
    folder: str | Path, recipe: ControlNetShapesRecipe = ControlNetShapesRecipe()
) -> Path:
    """`recipe.scenes` rendered scenes as `NNNN.png` with a `NNNN.txt` caption each."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([recipe.seed, 11])
    for index in range(recipe.scenes):
        scene = sample_scene(rng)
        unplaced = rng.random() < recipe.unplaced_share
        write_png_atomically(render(scene), folder / f"{index:04d}.png")
        with atomic_path(folder / f"{index:04d}.txt") as temporary:
            temporary.write_text(scene_caption(scene, rng, unplaced) + "\n", encoding="utf-8")
    return folder


@dataclass(frozen=True)
class FollowItem:
    """One proof scene: the prompt drawn (no position), the full caption scored, whether it matched, the
    canny map and the image drawn."""

    prompt: str
    expected: str
    matched: bool
    edges: Image.Image
    image: Image.Image


def follow_scenes(count: int, seed: int = 1000) -> list[Scene]:
    """`count` one-object base-world scenes placed at random, from a seed the training data never uses."""
    rng = np.random.default_rng([seed, 29])
    return [sample_scene(rng, objects=1) for _ in range(count)]


def follow_rate(
    pipe, controlnet, count: int, *, steps: int | None = None, seed: int = 1000, strength: float = 1.0
) -> tuple[float, list[FollowItem]]:
    """The share of `count` scenes where the image drawn from a colour-and-shape prompt (no size, no
    position) over the canny map of the rendered scene matches the scene's full caption, position and
    size included, by `lienzo.worlds.scorer`; `steps` None takes the model's default."""
    items = []
    for index, scene in enumerate(follow_scenes(count, seed)):
        obj = scene.objects[0]
        prompt = f"{describe_object(obj, with_size=False, with_position=False)} on "
        prompt += f"{article(scene.background)} {scene.background} background"
        edges = preprocess("canny", render(scene))
        unit = ControlUnit(controlnet, edges, strength=strength)
        image = pipe.generate(prompt, seed=seed + index, steps=steps, controlnets=[unit], progress=False)[0]
        expected = caption(scene)
        items.append(FollowItem(prompt, expected, score(expected, image).matched, edges, image))
    return sum(item.matched for item in items) / count, items
