"""The `Pipeline` object: a loaded model family (UNet, VAE, text encoders, tokenizers) and its prompts."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from lienzo.adapters import ModelPatcher
from lienzo.devices import default_device, default_dtype, warn_if_emulated
from lienzo.errors import InvalidArgumentError, ModelNotFoundError
from lienzo.io import ModelFiles, read_model
from lienzo.io.embedding_files import load_embeddings
from lienzo.io.formats import file_sha256
from lienzo.io.library import BUILTIN_FOLDER, ModelLibrary, library_from_config
from lienzo.io.vae_files import read_vae
from lienzo.models.clip import CLIPTextModel
from lienzo.models.specs import FamilySpec
from lienzo.models.unet import UNetModel
from lienzo.models.vae import AutoencoderKL
from lienzo.pipelines.compiling import CompiledUNet, compile_unet
from lienzo.pipelines.controlnets import LoadedControlNet, load_controlnet, resolve_units
from lienzo.pipelines.depth import depth2img
from lienzo.pipelines.fast_modes import FastModes
from lienzo.pipelines.generation import img2img, img2img_size, txt2img
from lienzo.pipelines.hypernetworks import HypernetworkSet
from lienzo.pipelines.images import ImageInput, load_image
from lienzo.pipelines.inpaint import inpaint
from lienzo.pipelines.loras import LoraSet
from lienzo.pipelines.options import HiresOptions, RefinerOptions, resolve_options
from lienzo.pipelines.outpaint import outpaint
from lienzo.pipelines.steps import StepCallback
from lienzo.pipelines.xray.run import XRay, run_xray
from lienzo.text.conditioning import PromptEncoding, TextEncoders
from lienzo.text.embeddings import Embeddings
from lienzo.text.tokenizer import CLIPTokenizer


@dataclass
class Pipeline:
    """A ready-to-run model: its components (UNet, VAE, text encoders and tokenizers) and its spec.

    Every network is in eval mode with gradients off. The UNet and text encoders are this Pipeline's own
    views (see lienzo.adapters): patching them through `unet_patcher` or `text_patchers` never reaches
    another Pipeline loaded from the same files, while unchanged weights stay shared. `loras` applies
    LoRA/LyCORIS files (`pipe.loras.add("name", 0.8)`), `hypernetworks` A1111 hypernetworks
    (`pipe.hypernetworks.add("name", 0.5)`), and every mode applies its prompt's `<lora:…>` and
    `<hypernet:…>` tags for the length of the call. Names resolve in `library` (default: lienzo.toml or
    ./models).
    Prompts trigger the textual-inversion `embeddings` by name; left None, they are every embedding in
    the library's embeddings folders that fits this model, as A1111 reads its embeddings folder.
    `fast` holds the fast modes a graph's samplers apply with this Pipeline as their MODEL (set on a view
    by the TomePatchModel and LienzoFastModes nodes); Pipeline's own methods take theirs per call (`fast=`).
    """

    spec: FamilySpec
    unet: UNetModel
    vae: AutoencoderKL
    text_encoders: list[CLIPTextModel]
    tokenizers: list[CLIPTokenizer]
    name: str | None = None
    path: Path | None = None
    _model_hash: str | None = field(default=None, repr=False, compare=False)
    library: ModelLibrary | None = field(default=None, repr=False, compare=False)
    embeddings: Embeddings | None = field(default=None, repr=False, compare=False)
    vae_name: str | None = field(default=None, repr=False, compare=False)
    fast: FastModes = field(default=FastModes(), repr=False, compare=False)
    unet_patcher: ModelPatcher = field(init=False, repr=False, compare=False)
    text_patchers: list[ModelPatcher] = field(init=False, repr=False, compare=False)
    loras: LoraSet = field(init=False, repr=False, compare=False)
    hypernetworks: HypernetworkSet = field(init=False, repr=False, compare=False)
    _library_embeddings: tuple = field(default=((), None), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.unet_patcher = ModelPatcher(self.unet)
        self.text_patchers = [ModelPatcher(encoder) for encoder in self.text_encoders]
        self.loras = LoraSet(self)
        self.hypernetworks = HypernetworkSet(self)

    def view(self) -> Pipeline:
        """A Pipeline over fresh views of the same (unpatched) weights; the VAE is shared as is."""
        unet, texts = self.unet_patcher.clone(), [patcher.clone() for patcher in self.text_patchers]
        return Pipeline(
            self.spec,
            unet.model,
            self.vae,
            [patcher.model for patcher in texts],
            self.tokenizers,
            self.name,
            self.path,
            self._model_hash,
            self.library,
            self.embeddings,
        )

    @contextlib.contextmanager
    def _prompt_adapters(self, prompt: str) -> Iterator[None]:
        """The prompt's `<lora:…>` and `<hypernet:…>` tags, applied while the block runs."""
        with self.loras.from_prompt(prompt), self.hypernetworks.from_prompt(prompt):
            yield

    @property
    def family(self) -> str:
        """The model family's name, e.g. "sd1", "sd2-v", "sdxl", "sd1-inpaint" (the spec's name)."""
        return self.spec.name

    @property
    def clip(self) -> TextEncoders:
        """The text encoders with their specs, tokenizers and embeddings, as one component."""
        return TextEncoders(
            self.spec.text_encoders, self.text_encoders, self.tokenizers, self.prompt_embeddings()
        )

    def prompt_embeddings(self) -> Embeddings | None:
        """`embeddings` when set, else the fitting files of the library's embeddings folders and built-in
        embeddings (read again only when those files change); plus those bundled in the applied LoRAs."""
        chosen = self.embeddings if self.embeddings is not None else self._folder_embeddings()
        bundled = self.loras.embeddings()
        if not bundled.entries:
            return chosen
        return Embeddings({**({} if chosen is None else chosen.entries), **bundled.entries})

    def _folder_embeddings(self) -> Embeddings | None:
        """The embeddings folders' and built-in embeddings that fit this model's towers; None when there is
        no embeddings folder and no built-in one fits (then `embedding:name` stays plain prompt text)."""
        library = self.model_library()
        folders = [folder for folder in library.folders("embeddings") if folder.is_dir()]
        sources = folders + [path for _, path in library.builtin_models("embeddings")]
        signature = tuple(files_signature(source) for source in sources)
        if signature != self._library_embeddings[0]:
            widths = [encoder.config.hidden_size for encoder in self.text_encoders]
            found = load_embeddings(sources).fitting(widths) if sources else None
            if not folders and found is not None and not found.entries:
                found = None
            self._library_embeddings = (signature, found)
        return self._library_embeddings[1]

    def embedding_hashes(self, names) -> dict[str, str]:
        """A1111's "TI hashes" of the named embeddings: name -> short file hash."""
        embeddings = self.prompt_embeddings()
        return {} if embeddings is None else embeddings.hashes(names)

    @property
    def model_hash(self) -> str | None:
        """A1111's "Model hash" of a single-file checkpoint: the first 10 hex digits of its sha256."""
        if self._model_hash is None and self.path is not None and Path(self.path).is_file():
            self._model_hash = file_sha256(self.path)[:10]
        return self._model_hash

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def encode_prompt(self, prompts: list[str], *, clip_skip: int = 1) -> PromptEncoding:
        """Text conditioning of a batch of prompts (long prompts in 75-token chunks, A1111 style)."""
        return self.clip.encode(prompts, clip_skip=clip_skip)

    def model_library(self) -> ModelLibrary:
        """Where names resolve: `library`, or without one the configured library with plain paths allowed
        (the Python API trusts its caller; the server gives its Pipelines a library that refuses them)."""
        return self.library or library_from_config(allow_paths=True)

    def use_vae(self, vae: str | Path) -> None:
        """Decode and encode with another VAE from now on: a file or folder (ldm or diffusers naming, or a
        whole checkpoint's VAE), or a name in the library's vae/ folders; other Pipelines keep theirs."""
        library = self.model_library()
        path = library.resolve("vae", vae)
        try:
            self.vae = _build(AutoencoderKL, self.spec.vae, read_vae(path), self.device, self.vae_dtype)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0][:160]
            raise InvalidArgumentError(
                f"the VAE {path.name} does not fit this {self.family} model ({first}); use a VAE made for it"
            ) from None
        self.vae_name = path.stem

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def load_controlnet(self, controlnet: str | Path) -> LoadedControlNet:
        """A ControlNet for this model (file, diffusers folder or name in the library's controlnet/),
        checked to fit it, on its device and dtype; a difference file gets this model's UNet added."""
        return load_controlnet(controlnet, self)

    def resolve_controlnets(self, settings: dict) -> dict:
        """`settings` with their `controlnets` units' models loaded and control images read."""
        if not settings.get("controlnets"):
            return settings
        return {**settings, "controlnets": resolve_units(self, settings["controlnets"])}

    def load_refiner(self, refiner: RefinerOptions | None) -> Pipeline | None:
        """The refiner model, loaded like `lienzo.load` on this Pipeline's device and dtype."""
        if refiner is None:
            return None
        return load(refiner.model, device=self.device, dtype=self.dtype)

    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        seed: int | None = None,
        batch_size: int = 1,
        clip_skip: int | None = None,
        hires: HiresOptions | None = None,
        refiner: RefinerOptions | None = None,
        callback: StepCallback | None = None,
        progress: bool = True,
        **more,
    ) -> list[Image.Image]:
        """txt2img: `batch_size` PIL images (item i from seed + i), settings in image.info["lienzo"].

        None takes the family default (see lienzo.pipelines.options); `more` takes the other
        GenerationOptions fields (variation_seed, variation_strength, guidance_rescale,
        sampler_options such as {"eta": 0.5, "s_noise": 1.0}, vae_tiling, controlnets: a list of
        ControlUnit). `progress` shows a tqdm bar.
        """
        more = self.resolve_controlnets(more)
        options = resolve_options(
            self.spec,
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            steps=steps,
            cfg=cfg,
            sampler=sampler,
            scheduler=scheduler,
            seed=seed,
            batch_size=batch_size,
            clip_skip=clip_skip,
            hires=hires,
            refiner=refiner,
            **more,
        )
        refined = self.load_refiner(options.refiner)
        with self._prompt_adapters(options.prompt):
            return txt2img(self, options, refiner=refined, callback=callback, progress=progress)

    def img2img(
        self,
        image: ImageInput,
        prompt: str,
        *,
        strength: float = 0.6,
        width: int | None = None,
        height: int | None = None,
        callback: StepCallback | None = None,
        progress: bool = True,
        **more,
    ) -> list[Image.Image]:
        """img2img (SDEdit): `image` noised to `strength` and denoised toward the prompt.

        The size defaults to the image's own, rounded down to multiples of 8; `more` takes generate's
        keyword arguments (negative_prompt, steps, cfg, sampler, seed, batch_size, ...).
        """
        source = load_image(image)
        width, height = img2img_size(source, width, height)
        more = self.resolve_controlnets(more)
        options = resolve_options(
            self.spec, prompt=prompt, strength=strength, width=width, height=height, mode="img2img", **more
        )
        refined = self.load_refiner(options.refiner)
        with self._prompt_adapters(options.prompt):
            return img2img(self, source, options, refiner=refined, callback=callback, progress=progress)

    def inpaint(
        self,
        image: ImageInput,
        mask: ImageInput,
        prompt: str,
        *,
        strength: float = 1.0,
        mask_blur: float = 4,
        only_masked: bool = False,
        padding: int = 32,
        **more,
    ) -> list:
        """Repaint the white part of `mask`; pixels outside it come back unchanged.

        Inpaint models (9 channels) get the masked image as conditioning, others blend in the re-noised
        original at every step. `only_masked` works on a box around the mask plus `padding` at the
        generation size; `more` takes generate's keyword arguments (hires fix and the refiner included).
        See lienzo.pipelines.inpaint.
        """
        refined = self.load_refiner(more.get("refiner"))
        more = self.resolve_controlnets(more)
        with self._prompt_adapters(prompt):
            return inpaint(
                self,
                image,
                mask,
                prompt,
                strength=strength,
                mask_blur=mask_blur,
                only_masked=only_masked,
                padding=padding,
                refiner_model=refined,
                **more,
            )

    def outpaint(
        self,
        image: ImageInput,
        prompt: str,
        *,
        left: int = 0,
        right: int = 0,
        top: int = 0,
        bottom: int = 0,
        **more,
    ) -> list:
        """Extend the canvas by the margins (multiples of 8) and paint the new area; the original stays."""
        refined = self.load_refiner(more.get("refiner"))
        margins = {"left": left, "right": right, "top": top, "bottom": bottom}
        more = self.resolve_controlnets(more)
        with self._prompt_adapters(prompt):
            return outpaint(self, image, prompt, refiner_model=refined, **margins, **more)

    def depth2img(self, image: ImageInput, depth, prompt: str, *, strength: float = 0.8, **more) -> list:
        """img2img guided by a depth map image, for SD 2 depth models (family sd2-depth); `depth` None
        estimates the map with the folder's DPT depth_estimator/ or the models root's depth/ one."""
        more = self.resolve_controlnets(more)
        with self._prompt_adapters(prompt):
            return depth2img(self, image, depth, prompt, strength=strength, **more)

    def compile(self) -> CompiledUNet:
        """torch.compile this Pipeline's UNet in place (same outputs within bf16 rounding; compiled on
        the first call at each size, cached on disk for later processes). See lienzo.pipelines.compiling."""
        return compile_unet(self.unet)

    def xray(self, prompt: str, *, every: int = 5, **settings) -> XRay:
        """Generate one image while watching: the token breakdown, the schedule, the decoded trajectory
        every `every` steps and per-word cross-attention maps; `settings` are generate's (one image, no
        hires pass or refiner). `XRay.save(folder)` writes it all with an index.html. See
        lienzo.pipelines.xray."""
        return run_xray(self, prompt, every=every, **settings)


def _build(module_class: type[nn.Module], config, state_dict: dict, device, dtype) -> nn.Module:
    """Build a network without random init (meta device) and take the checkpoint's tensors as its weights;
    convolutional networks get channels_last weights."""
    with torch.device("meta"):
        module = module_class(config)
    module.load_state_dict(state_dict, strict=True, assign=True)
    module = module.to(device=device, dtype=dtype)
    if module_class is not CLIPTextModel:
        module = module.to(memory_format=torch.channels_last)
    return module.eval().requires_grad_(False)


def _tokenizer(folder: Path | None, pad_token: str) -> CLIPTokenizer:
    return (
        CLIPTokenizer.from_folder(folder)
        if folder is not None
        else CLIPTokenizer.from_bundled(pad_token=pad_token)
    )


def pipeline_from_files(
    files: ModelFiles, *, device=None, dtype=None, name: str | None = None, path: Path | None = None
) -> Pipeline:
    """Assemble a `Pipeline` from checkpoint state dicts already in lienzo's naming."""
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    spec = files.spec
    text_specs = spec.text_encoders
    return Pipeline(
        spec=spec,
        unet=_build(UNetModel, spec.unet, files.unet, device, dtype),
        vae=_build(AutoencoderKL, spec.vae, files.vae, device, dtype),
        text_encoders=[
            _build(CLIPTextModel, te.config, sd, device, dtype)
            for te, sd in zip(text_specs, files.text_encoders, strict=True)
        ],
        tokenizers=[
            _tokenizer(folder, te.pad_token)
            for te, folder in zip(text_specs, files.tokenizer_folders, strict=True)
        ],
        name=name,
        path=path,
    )


def load(
    path: str | Path | None = None,
    *,
    device=None,
    dtype=None,
    family: str | None = None,
    cache: bool = True,
) -> Pipeline:
    """Load a diffusers folder or a single-file checkpoint (no path: the built-in shapes model);
    `family` overrides detection (e.g. "sd2-v").

    The last MODEL_CACHE_SIZE models loaded stay in memory (a base and its refiner, say): loading the
    same unchanged files with the same device, dtype and family again returns at once a new Pipeline
    over views of the same weights (see Pipeline.view), so patching one never changes another.
    `cache=False` reads the files again into networks of their own."""
    if path is None:
        if not (BUILTIN_FOLDER / "model_index.json").is_file():
            raise ModelNotFoundError(
                f"this install has no built-in model at {BUILTIN_FOLDER}; pass a model path, or train one "
                "with `lienzo train recipe shapes --out DIR`"
            )
        path = BUILTIN_FOLDER
    path = Path(path)
    device = torch.device(device) if device is not None else default_device()
    if dtype is not None:
        warn_if_emulated(device, dtype)
    dtype = dtype or default_dtype(device)
    key = (str(path.resolve()), files_signature(path), str(device), str(dtype), family)
    if cache and key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key].view()
    files = read_model(path, family=family)
    name = path.stem if path.is_file() else path.name
    pipe = pipeline_from_files(files, device=device, dtype=dtype, name=name, path=path)
    if not cache:
        return pipe
    _LOADED[key] = pipe
    while len(_LOADED) > MODEL_CACHE_SIZE:
        _LOADED.popitem(last=False)
    return pipe.view()


MODEL_CACHE_SIZE = 2
_LOADED: OrderedDict[tuple, Pipeline] = OrderedDict()
"""The most recently loaded models by (path, files signature, device, dtype, family), oldest first."""


def set_model_cache_size(size: int) -> None:
    """Keep the last `size` models `load` read in memory (the server's --model-cache); older ones go now."""
    global MODEL_CACHE_SIZE
    if size < 1:
        raise InvalidArgumentError(f"the model cache holds 1 or more models, got {size}")
    MODEL_CACHE_SIZE = size
    while len(_LOADED) > MODEL_CACHE_SIZE:
        _LOADED.popitem(last=False)


def files_signature(path: Path) -> tuple:
    """(name, size, mtime) of the file, or of every file under the folder: changes when weights change."""
    if not path.exists():
        return ()
    files = [path] if path.is_file() else sorted(item for item in path.rglob("*") if item.is_file())
    return tuple((str(item), item.stat().st_size, item.stat().st_mtime_ns) for item in files)
