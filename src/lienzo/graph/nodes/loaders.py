"""Loader nodes: CheckpointLoaderSimple, VAELoader, LoraLoader, LoraLoaderModelOnly (names from the model
library)."""

from __future__ import annotations

from lienzo.devices import default_device, default_dtype
from lienzo.errors import LienzoError
from lienzo.graph.environment import GraphEnvironment
from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.values import ClipModel, with_lora
from lienzo.io.vae_files import read_vae_with_config
from lienzo.models.vae import AutoencoderKL
from lienzo.pipelines.pipeline import _build, files_signature, load

STRENGTH = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}


def model_names(kind: str):
    """The choices of a model combo: the names the library lists for `kind`."""

    def names(environment: GraphEnvironment) -> list[str]:
        return [entry.name for entry in environment.library.list(kind)]

    return names


def model_accept(kind: str):
    """Accept any name the library resolves (a name with its suffix, as ComfyUI lists files)."""

    def accept(environment: GraphEnvironment, name: str) -> str | None:
        try:
            environment.library.resolve(kind, name)
        except LienzoError as error:
            return str(error)
        return None

    return accept


def model_input(name: str, kind: str) -> Input:
    return Input(name, "COMBO", choices=model_names(kind), accept=model_accept(kind))


def file_changed(kind: str, input_name: str):
    """A node's `changed`: the resolved file's signature, so an edited model file reruns the node."""

    def changed(environment: GraphEnvironment, inputs: dict):
        try:
            return repr(files_signature(environment.library.resolve(kind, inputs.get(input_name, ""))))
        except LienzoError:
            return None

    return changed


def checkpoint_loader(context, ckpt_name: str):
    """Load a checkpoint by name through the library (the built-in model included); lienzo.load caches."""
    environment = context.environment
    pipe = load(environment.library.resolve("checkpoints", ckpt_name))
    pipe.library = environment.library
    return pipe, ClipModel(pipe), pipe.vae


def vae_loader(context, vae_name: str):
    """Load a stand-alone VAE by name (its latents are rescaled to each model's scaling factor)."""
    config, state = read_vae_with_config(context.environment.library.resolve("vae", vae_name))
    device = default_device()
    return (_build(AutoencoderKL, config, state, device, default_dtype(device)),)


def lora_loader(context, model, clip: ClipModel, lora_name: str, strength_model: float, strength_clip: float):
    """Apply a LoRA to the model (UNet strength) and to CLIP (text-encoder strength), on new views."""
    path = context.environment.library.resolve("loras", lora_name)
    new_model = with_lora(model, path, strength_model, 0.0) if strength_model else model
    new_clip = clip
    if strength_clip:
        new_clip = ClipModel(with_lora(clip.pipe, path, 0.0, strength_clip), clip.clip_skip)
    return new_model, new_clip


def lora_loader_model_only(context, model, lora_name: str, strength_model: float):
    """Apply a LoRA to the model only."""
    path = context.environment.library.resolve("loras", lora_name)
    return (with_lora(model, path, strength_model, 0.0) if strength_model else model,)


register(
    NodeType(
        "CheckpointLoaderSimple",
        checkpoint_loader,
        (model_input("ckpt_name", "checkpoints"),),
        ("MODEL", "CLIP", "VAE"),
        category="loaders",
        display_name="Load Checkpoint",
        description="Loads a diffusion model checkpoint (the built-in shapes model is listed too).",
        changed=file_changed("checkpoints", "ckpt_name"),
    )
)
register(
    NodeType(
        "VAELoader",
        vae_loader,
        (model_input("vae_name", "vae"),),
        ("VAE",),
        category="loaders",
        display_name="Load VAE",
        description="Loads a VAE file or folder from the models folder's vae/.",
        changed=file_changed("vae", "vae_name"),
    )
)
register(
    NodeType(
        "LoraLoader",
        lora_loader,
        (
            Input("model", "MODEL"),
            Input("clip", "CLIP"),
            model_input("lora_name", "loras"),
            Input("strength_model", "FLOAT", STRENGTH),
            Input("strength_clip", "FLOAT", STRENGTH),
        ),
        ("MODEL", "CLIP"),
        category="loaders",
        display_name="Load LoRA",
        description="Applies a LoRA or LyCORIS file to the diffusion model and the text encoder.",
        changed=file_changed("loras", "lora_name"),
    )
)
register(
    NodeType(
        "LoraLoaderModelOnly",
        lora_loader_model_only,
        (
            Input("model", "MODEL"),
            model_input("lora_name", "loras"),
            Input("strength_model", "FLOAT", STRENGTH),
        ),
        ("MODEL",),
        category="loaders",
        display_name="LoraLoaderModelOnly",
        description="Applies a LoRA or LyCORIS file to the diffusion model only.",
        changed=file_changed("loras", "lora_name"),
    )
)
