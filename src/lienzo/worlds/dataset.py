"""An endless, seeded shapes-world dataset whose example i depends only on (seed, i)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.worlds.shapes import BASE_SHAPES, CANVAS, Scene, caption, render, sample_scene


@dataclass(frozen=True)
class ShapesDataConfig:
    """How training examples are drawn: caption drop rates, output size, held-out pairs."""

    seed: int = 0
    resolution: int = CANVAS
    drop_size: float = 0.3
    drop_position: float = 0.3
    allow_held_out: bool = False
    shapes: tuple[str, ...] = BASE_SHAPES


@dataclass(frozen=True)
class ShapesExample:
    """One example: the scene, its rendered image and its (possibly shortened) caption."""

    scene: Scene
    image: Image.Image
    caption: str


def image_to_array(image: Image.Image) -> np.ndarray:
    """An RGB image as a float32 (3, H, W) array in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    return np.ascontiguousarray(array)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a float32 (3, H, W) tensor in [-1, 1]."""
    return torch.from_numpy(image_to_array(image))


def scene_and_caption(config: ShapesDataConfig, index: int) -> tuple[Scene, str]:
    """The scene and training caption at `index`, a pure function of (config, index)."""
    rng = np.random.default_rng([config.seed, index])
    scene = sample_scene(rng, allow_held_out=config.allow_held_out, shapes=config.shapes)
    return scene, caption(scene, rng, drop_size=config.drop_size, drop_position=config.drop_position)


class ShapesDataset:
    """Endless stream of {"image": tensor (3, H, W) in [-1, 1], "caption": str}, the training loop's item
    form; rank r of w reads indices r, r+w, r+2w, ...

    Example i is a pure function of (seed, i), so `state_dict()` (the next position) is all a resumed
    run needs to see the same data."""

    def __init__(self, config: ShapesDataConfig | None = None, *, rank: int = 0, world_size: int = 1):
        self.config = config or ShapesDataConfig()
        self.rank = rank
        self.world_size = world_size
        self.position = 0

    def example(self, index: int) -> ShapesExample:
        """The example at a global index: its scene, image and caption."""
        scene, text = scene_and_caption(self.config, index)
        image = render(scene)
        if self.config.resolution != CANVAS:
            image = image.resize((self.config.resolution, self.config.resolution), Image.Resampling.BOX)
        return ShapesExample(scene, image, text)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        example = self.example(index)
        return {"image": image_to_tensor(example.image), "caption": example.caption}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor | str]]:
        while True:
            index = self.position * self.world_size + self.rank
            self.position += 1
            yield self[index]

    def batch(self, size: int) -> dict[str, torch.Tensor | list[str]]:
        """The next `size` examples of this rank as a batch dict: "image" (B, 3, H, W), "caption" a list."""
        indices = [(self.position + k) * self.world_size + self.rank for k in range(size)]
        self.position += size
        examples = [self.example(index) for index in indices]
        images = np.stack([image_to_array(example.image) for example in examples])
        return {"image": torch.from_numpy(images), "caption": [example.caption for example in examples]}

    def state_dict(self) -> dict[str, int]:
        """Where this rank's stream stands; with the same config, `load_state_dict` resumes exactly."""
        return {"seed": self.config.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume the stream at a saved position (the seed must match the config's)."""
        if int(state["seed"]) != self.config.seed:
            raise InvalidArgumentError(
                f"the saved data position belongs to seed {state['seed']}, this run uses seed "
                f"{self.config.seed}; resume with the seed the run started with"
            )
        self.position = int(state["position"])


def caption_corpus(n: int, seed: int = 0, *, allow_held_out: bool = True) -> list[str]:
    """`n` training-style captions (with dropped parts), e.g. to train a tokenizer on the world's words."""
    config = ShapesDataConfig(seed=seed, allow_held_out=allow_held_out)
    return [scene_and_caption(config, index)[1] for index in range(n)]
