"""Image nodes: LoadImage, LoadImageMask, SaveImage, PreviewImage, ImageScale, ImageScaleBy,
ImagePadForOutpaint. Files are read from the input folder and written to the output and temp folders
only (names checked, no `..`, no symlink leading out)."""

from __future__ import annotations

import secrets
import string

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lienzo.errors import InvalidArgumentError
from lienzo.graph.environment import GraphEnvironment, resolve_inside
from lienzo.graph.registry import Input, NodeType, register
from lienzo.graph.saving import COMPRESS_LEVEL, a1111_record, png_info, save_images
from lienzo.graph.values import images_to_pil, images_to_pixels
from lienzo.pipelines.tensor_images import pad_for_outpaint, resample, target_size

MAX_RESOLUTION = 16384
IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP = ("disabled", "center")
CHANNELS = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}


def input_image(environment: GraphEnvironment, name: str) -> Image.Image:
    """An image from the input folder by its relative name (ComfyUI's "name [input]" annotation allowed)."""
    name = name.removesuffix(" [input]")
    path = resolve_inside(environment.input_dir, name, "image")
    try:
        with Image.open(path) as opened:
            return ImageOps.exif_transpose(opened)
    except FileNotFoundError:
        raise InvalidArgumentError(
            f"image {name!r} is not in the input folder {environment.input_dir}"
        ) from None
    except (UnidentifiedImageError, OSError) as error:
        raise InvalidArgumentError(f"cannot read {name!r} as an image: {error}") from None


def image_accept(environment: GraphEnvironment, name: str) -> str | None:
    """Accept an input-folder file that exists (listed or not), refusing names that leave the folder."""
    try:
        path = resolve_inside(environment.input_dir, name.removesuffix(" [input]"), "image")
    except InvalidArgumentError as error:
        return str(error)
    return None if path.is_file() else "no such file in the input folder"


def image_changed(environment: GraphEnvironment, inputs: dict):
    """The input file's size and modification time, so a replaced file reruns the node."""
    try:
        stat = resolve_inside(environment.input_dir, str(inputs.get("image", "")), "image").stat()
    except (InvalidArgumentError, OSError):
        return None
    return [stat.st_size, stat.st_mtime_ns]


def channel_array(image: Image.Image, band: str) -> np.ndarray:
    return np.asarray(image.getchannel(band), dtype=np.float32) / 255


def load_image(context, image: str):
    """An input-folder image and its mask (1 - alpha; zeros without alpha)."""
    opened = input_image(context.environment, image)
    rgb = torch.from_numpy(np.asarray(opened.convert("RGB"), dtype=np.float32) / 255)[None]
    if "A" in opened.getbands():
        mask = 1 - torch.from_numpy(channel_array(opened, "A"))
    else:
        mask = torch.zeros(opened.height, opened.width)
    return rgb, mask[None]


def load_image_mask(context, image: str, channel: str):
    """One channel of an input-folder image as a mask (alpha inverted: transparent = masked)."""
    opened = input_image(context.environment, image)
    band = CHANNELS[channel]
    if opened.mode in ("L", "P", "I", "F") and band != "A":
        opened = opened.convert("RGB")
    if band not in opened.getbands():
        return (torch.zeros(1, opened.height, opened.width),)
    values = torch.from_numpy(channel_array(opened, band))
    return ((1 - values if band == "A" else values)[None],)


def saved(context, images, folder, prefix: str, kind: str, level: int, prompt, extra_pnginfo):
    pil = images_to_pil(images)
    infos = [
        png_info(
            prompt,
            extra_pnginfo or {},
            a1111_record(prompt, context.node_id, image, index) if prompt else None,
        )
        for index, image in enumerate(pil)
    ]
    return {"ui": {"images": save_images(pil, folder, prefix, kind, infos, level)}, "result": ()}


def save_image(context, images, filename_prefix: str, prompt=None, extra_pnginfo=None):
    """Save images to the output folder as PNG with the prompt, workflow and A1111 parameters."""
    return saved(
        context,
        images,
        context.environment.output_dir,
        filename_prefix,
        "output",
        COMPRESS_LEVEL,
        prompt,
        extra_pnginfo,
    )


def preview_image(context, images, prompt=None, extra_pnginfo=None):
    """Save images to the temp folder for viewing."""
    prefix = "ComfyUI_temp_" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(5))
    return saved(context, images, context.environment.temp_dir, prefix, "temp", 1, prompt, extra_pnginfo)


def to_images(pixels: torch.Tensor) -> torch.Tensor:
    return ((pixels.permute(0, 2, 3, 1) + 1) / 2).clamp(0, 1)


def image_scale(context, image, upscale_method: str, width: int, height: int, crop: str):
    """Resize images (0 in width or height keeps the aspect ratio)."""
    pixels = images_to_pixels(image)
    width, height = target_size(pixels, width, height)
    return (to_images(resample(pixels, width, height, upscale_method, crop)),)


def image_scale_by(context, image, upscale_method: str, scale_by: float):
    """Resize images by a factor."""
    pixels = images_to_pixels(image)
    width, height = round(pixels.shape[-1] * scale_by), round(pixels.shape[-2] * scale_by)
    return (to_images(resample(pixels, width, height, upscale_method)),)


def image_pad_for_outpaint(context, image, left: int, top: int, right: int, bottom: int, feathering: int):
    """Pad images with grey margins and a mask over them, feathered into the original."""
    padded, mask = pad_for_outpaint(images_to_pixels(image), left, top, right, bottom, feathering)
    return to_images(padded), mask[:, 0]


register(
    NodeType(
        "LoadImage",
        load_image,
        (Input("image", "COMBO", {"image_upload": True}, GraphEnvironment.input_files, accept=image_accept),),
        ("IMAGE", "MASK"),
        category="image",
        display_name="Load Image",
        description="Loads an image from the input folder; its mask is the inverted alpha channel.",
        changed=image_changed,
    )
)
register(
    NodeType(
        "LoadImageMask",
        load_image_mask,
        (
            Input(
                "image", "COMBO", {"image_upload": True}, GraphEnvironment.input_files, accept=image_accept
            ),
            Input("channel", "COMBO", choices=tuple(CHANNELS)),
        ),
        ("MASK",),
        category="mask",
        display_name="Load Image (as Mask)",
        description="Loads one channel of an input-folder image as a mask.",
        changed=image_changed,
    )
)
register(
    NodeType(
        "SaveImage",
        save_image,
        (Input("images", "IMAGE"), Input("filename_prefix", "STRING", {"default": "ComfyUI"})),
        category="image",
        display_name="Save Image",
        description="Saves the input images to the output folder.",
        output_node=True,
        hidden=("prompt", "extra_pnginfo"),
    )
)
register(
    NodeType(
        "PreviewImage",
        preview_image,
        (Input("images", "IMAGE"),),
        category="image",
        display_name="Preview Image",
        description="Saves the input images to the temp folder for viewing.",
        output_node=True,
        hidden=("prompt", "extra_pnginfo"),
    )
)
register(
    NodeType(
        "ImageScale",
        image_scale,
        (
            Input("image", "IMAGE"),
            Input("upscale_method", "COMBO", choices=IMAGE_METHODS),
            Input("width", "INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            Input("height", "INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            Input("crop", "COMBO", choices=CROP),
        ),
        ("IMAGE",),
        category="image/upscaling",
        display_name="Upscale Image",
        description="Resizes images (0 keeps the aspect ratio).",
    )
)
register(
    NodeType(
        "ImageScaleBy",
        image_scale_by,
        (
            Input("image", "IMAGE"),
            Input("upscale_method", "COMBO", choices=IMAGE_METHODS),
            Input("scale_by", "FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}),
        ),
        ("IMAGE",),
        category="image/upscaling",
        display_name="Upscale Image By",
        description="Resizes images by a factor.",
    )
)
PADDING = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
register(
    NodeType(
        "ImagePadForOutpaint",
        image_pad_for_outpaint,
        (
            Input("image", "IMAGE"),
            Input("left", "INT", PADDING),
            Input("top", "INT", PADDING),
            Input("right", "INT", PADDING),
            Input("bottom", "INT", PADDING),
            Input("feathering", "INT", {"default": 40, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
        ),
        ("IMAGE", "MASK"),
        category="image",
        display_name="Pad Image for Outpainting",
        description="Adds grey margins to images and returns a mask over them for outpainting.",
    )
)
