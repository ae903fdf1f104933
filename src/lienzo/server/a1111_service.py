"""A1111 jobs: the current options (persisted), checkpoint loading, and running txt2img/img2img on the
queue's worker through the Pipeline's own methods; images are saved like the CLI saves them."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.io.atomic import atomic_path
from lienzo.io.library import BUILTIN_NAME
from lienzo.pipelines.images import resize_image
from lienzo.pipelines.metadata import SAMPLER_DISPLAY_NAMES, format_parameters, lienzo_version, save_png
from lienzo.pipelines.options import HiresOptions
from lienzo.pipelines.output import release_paths, reserve_paths
from lienzo.pipelines.pipeline import Pipeline, files_signature, load, set_model_cache_size
from lienzo.server.a1111_fast import FAST_OPTIONS, check_fast_options
from lienzo.server.a1111_request import A1111Request, read_request
from lienzo.server.config import ServerConfig
from lienzo.server.jobs import Job
from lienzo.server.worker import ImageSkipped, Outcome, Worker

log = logging.getLogger("lienzo.server")

DEFAULT_OPTIONS = {
    "sd_model_checkpoint": BUILTIN_NAME,
    "sd_vae": "Automatic",
    "CLIP_stop_at_last_layers": 1,
    "samples_format": "png",
    "outdir_samples": "",
    "live_previews_enable": True,
    **FAST_OPTIONS,
}
SUBFOLDERS = {"txt2img": "txt2img-images", "img2img": "img2img-images"}


class A1111Service:
    """The state behind /sdapi/v1: options (kept in the state folder) and the models they name."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.path = config.state_dir / "a1111-options.json"
        self.options = dict(DEFAULT_OPTIONS)
        if self.path.is_file():
            self.options.update(json.loads(self.path.read_text()))
        set_model_cache_size(config.model_cache)
        self._last: tuple[tuple, Pipeline] | None = None

    def set_options(self, changes: dict) -> None:
        """Apply POST /options: a new `sd_model_checkpoint` must name a checkpoint in the library."""
        if not isinstance(changes, dict):
            raise InvalidArgumentError("options must be a JSON object of option: value")
        if "sd_model_checkpoint" in changes:
            name = changes["sd_model_checkpoint"]
            if not isinstance(name, str):
                raise InvalidArgumentError(f"sd_model_checkpoint must be a text, got {name!r}")
            changes = {**changes, "sd_model_checkpoint": self.checkpoint_name(name)}
        check_fast_options(changes)
        self.options.update(changes)
        with atomic_path(self.path) as temporary:
            temporary.write_text(json.dumps(self.options, indent=1))

    def checkpoint_name(self, title: str) -> str:
        """A checkpoint name from a name or an A1111 title ("name [hash]"), checked to exist."""
        name = title.rsplit(" [", 1)[0] if title.endswith("]") else title
        self.config.library.resolve("checkpoints", name)
        return name

    def load(self, name: str | None) -> Pipeline:
        """The named checkpoint (the current option when None), through lienzo.load's LRU cache; the
        last one used is kept as is while its files stay unchanged, so a job does not pay for a new view
        (a prompt's LoRA tags are removed when its call ends, so the Pipeline is the same for every job)."""
        name = self.checkpoint_name(name or self.options["sd_model_checkpoint"])
        path = self.config.library.resolve("checkpoints", name)
        key = (str(path), files_signature(path), name)
        if self._last is None or self._last[0] != key:
            pipe = load(path, device=self.config.device)
            pipe.library = self.config.library
            pipe.name = name
            self._last = (key, pipe)
        return self._last[1]

    def read(self, job: Job) -> A1111Request:
        return read_request(job.kind, job.request, self.options["sd_model_checkpoint"], self.options)

    def run(self, job: Job, worker: Worker) -> Outcome:
        """Draw the request's n_iter batches, save them, and return A1111's response fields."""
        request = self.read(job)
        pipe = self.load(request.checkpoint)
        progress = worker.progress
        progress.job_count, progress.started, progress.vae = request.n_iter, time.time(), pipe.vae
        images: list[Image.Image] = []
        for iteration in range(request.n_iter):
            progress.job_no = iteration
            seed = request.settings["seed"] + iteration * request.settings["batch_size"]
            try:
                images += draw(
                    pipe, request, seed, lambda state: _on_step(worker, state), self.config.safety_checker
                )
            except ImageSkipped:
                progress.skipped = True
        paths = save(images, self.config.output_dir / SUBFOLDERS[job.kind])
        records = [image.info["lienzo"] for image in images]
        return Outcome(
            {
                "images": [
                    {"filename": path.name, "subfolder": path.parent.name, "type": "output"} for path in paths
                ],
                "info": info(request, records, pipe),
            }
        )


def _on_step(worker: Worker, state: dict) -> None:
    worker.check()
    progress = worker.progress
    progress.step, progress.steps = state["i"] + 1, state.get("total", state["i"] + 1)
    progress.denoised = state["denoised"][:1].detach()


def draw(
    pipe: Pipeline, request: A1111Request, seed: int, callback, safety_checker: str = "auto"
) -> list[Image.Image]:
    """One batch of a request through the Pipeline method its mode calls for, its images checked by the
    server's safety checker setting."""
    settings = {**request.settings, "seed": seed, "safety_checker": safety_checker}
    if isinstance(settings.get("hires"), dict):
        settings["hires"] = HiresOptions(**settings["hires"])
    run = {"callback": callback, "progress": False}
    if request.mode == "txt2img":
        return pipe.generate(**settings, **run)
    prompt, strength = settings.pop("prompt"), settings.pop("strength")
    size = (settings["width"], settings["height"])
    if request.mask is None:
        return pipe.img2img(request.init_image, prompt, strength=strength, **settings, **run)
    image, mask = request.init_image, request.mask
    if not request.extras["only_masked"]:
        image, mask = resize_image(image, *size), resize_image(mask, *size)
    elif mask.size != image.size:
        mask = resize_image(mask, *image.size)
    return pipe.inpaint(image, mask, prompt, strength=strength, **request.extras, **settings, **run)


def save(images: list[Image.Image], folder: Path) -> list[Path]:
    """Each image as a numbered PNG with A1111's parameters, atomically (as the CLI saves)."""
    paths = reserve_paths(folder, [image.info["lienzo"]["seed"] for image in images])
    try:
        for image, path in zip(images, paths, strict=True):
            save_png(image, path, image.info["lienzo"])
    except BaseException:
        release_paths(paths)
        raise
    return paths


def info(request: A1111Request, records: list[dict], pipe: Pipeline) -> dict:
    """A1111's `info` object (returned as a JSON string) for the images drawn."""
    first = records[0] if records else {}
    settings = request.settings
    return {
        "prompt": settings["prompt"],
        "all_prompts": [record["prompt"] for record in records],
        "negative_prompt": settings["negative_prompt"],
        "all_negative_prompts": [record["negative_prompt"] for record in records],
        "seed": settings["seed"],
        "all_seeds": [record["seed"] for record in records],
        "subseed": settings.get("variation_seed", -1),
        "all_subseeds": [record["variation_seed"] or -1 for record in records],
        "subseed_strength": settings.get("variation_strength", 0),
        "width": settings["width"],
        "height": settings["height"],
        "sampler_name": SAMPLER_DISPLAY_NAMES.get(first.get("sampler"), first.get("sampler")),
        "scheduler": first.get("scheduler"),
        "cfg_scale": settings["cfg"],
        "steps": settings["steps"],
        "batch_size": settings["batch_size"],
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": pipe.name,
        "sd_model_hash": pipe.model_hash,
        "sd_vae_name": pipe.vae_name,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": settings.get("strength") or (settings.get("hires") or {}).get("strength"),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [format_parameters(record) for record in records],
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": settings["clip_skip"],
        "is_using_inpainting_conditioning": pipe.spec.variant == "inpaint",
        "version": lienzo_version(),
    }
