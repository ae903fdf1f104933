"""ComfyUI's file routes: /view (outputs, inputs, temp files) and /upload/image, /upload/mask."""

from __future__ import annotations

import asyncio
import io
import json
import mimetypes

from aiohttp import web
from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.server.context import ServerContext
from lienzo.server.files import check_image, folder_for, safe_join, split_annotation, store_upload


def file_routes(context: ServerContext) -> list[tuple[str, str, object]]:
    handlers = FileHandlers(context)
    return [
        ("GET", "/view", handlers.view),
        ("POST", "/upload/image", handlers.upload_image),
        ("POST", "/upload/mask", handlers.upload_mask),
    ]


class FileHandlers:
    def __init__(self, context: ServerContext) -> None:
        self.context = context

    async def view(self, request: web.Request) -> web.StreamResponse:
        """A file from the output (default), input or temp folder; `preview=webp;90` re-encodes it,
        `channel=rgb|a` picks the colour or the alpha."""
        query = request.query
        filename, kind = split_annotation(query.get("filename", ""), query.get("type", "output"))
        if not filename:
            raise InvalidArgumentError("/view needs ?filename=")
        path = safe_join(folder_for(self.context.folders, kind), query.get("subfolder", ""), filename)
        if not path.is_file():
            return web.json_response({"error": f"no file {filename!r} in {kind}"}, status=404)
        preview, channel = query.get("preview"), query.get("channel")
        if not preview and channel in (None, "", "rgba"):
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return web.Response(
                body=path.read_bytes(),
                content_type=content_type,
                headers={"Content-Disposition": f'filename="{path.name}"'},
            )
        body, content_type = await asyncio.to_thread(_reencode, path, preview, channel)
        return web.Response(body=body, content_type=content_type)

    async def upload_image(self, request: web.Request) -> web.Response:
        fields = await _form(request)
        data, name = self._file(fields)
        check_image(data)
        kind, subfolder = fields.get("type") or "input", fields.get("subfolder") or ""
        folder = folder_for(self.context.folders, kind)
        overwrite = fields.get("overwrite") in ("true", "1")
        stored = await asyncio.to_thread(store_upload, folder, subfolder, name, data, overwrite)
        return web.json_response({"name": stored, "subfolder": subfolder, "type": kind})

    async def upload_mask(self, request: web.Request) -> web.Response:
        """The upload's alpha copied onto the original it refers to (`original_ref`), as ComfyUI does."""
        fields = await _form(request)
        data, name = self._file(fields)
        mask = check_image(data)
        try:
            reference = json.loads(fields.get("original_ref") or "")
            original_name, original_kind = split_annotation(
                reference["filename"], reference.get("type", "input")
            )
            original_subfolder = reference.get("subfolder") or ""
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidArgumentError(
                '/upload/mask needs original_ref: {"filename", "subfolder", "type"}'
            ) from None
        original = safe_join(
            folder_for(self.context.folders, original_kind), original_subfolder, original_name
        )
        if not original.is_file():
            return web.json_response({"error": f"no original image {original_name!r}"}, status=404)
        combined = await asyncio.to_thread(_apply_alpha, original, mask)
        kind, subfolder = fields.get("type") or "input", fields.get("subfolder") or ""
        folder = folder_for(self.context.folders, kind)
        overwrite = fields.get("overwrite") in ("true", "1")
        stored = await asyncio.to_thread(store_upload, folder, subfolder, name, combined, overwrite)
        return web.json_response({"name": stored, "subfolder": subfolder, "type": kind})

    def _file(self, fields: dict) -> tuple[bytes, str]:
        """The `image` file field, refused (413) above --max-upload-mb."""
        data, name = _file(fields, "image")
        limit = self.context.config.max_upload_bytes
        if len(data) > limit:
            raise web.HTTPRequestEntityTooLarge(
                max_size=limit,
                actual_size=len(data),
                text=f"uploads are limited to {limit} bytes (--max-upload-mb)",
            )
        return data, name


async def _form(request: web.Request) -> dict:
    """The multipart fields: text values as str, the file as (bytes, filename)."""
    if not request.content_type.startswith("multipart/"):
        raise InvalidArgumentError("uploads are multipart/form-data with an `image` file field")
    fields: dict = {}
    try:
        reader = await request.multipart()
        async for part in reader:
            if part.name is None:
                continue
            data = await part.read()
            fields[part.name] = (
                (bytes(data), part.filename) if part.filename is not None else data.decode("utf-8", "replace")
            )
    except (ValueError, AssertionError, RuntimeError) as error:
        raise InvalidArgumentError(f"cannot read the multipart upload ({error})") from None
    return fields


def _file(fields: dict, name: str) -> tuple[bytes, str]:
    value = fields.get(name)
    if not isinstance(value, tuple) or not value[1]:
        raise InvalidArgumentError(f"the upload needs a file field named {name!r} with a file name")
    return value


def _reencode(path, preview: str | None, channel: str | None) -> tuple[bytes, str]:
    with Image.open(path) as opened:
        image = opened.convert("RGBA")
    if channel == "a":
        alpha = image.getchannel("A")
        image = Image.merge("RGBA", (alpha, alpha, alpha, Image.new("L", image.size, 255)))
    elif channel == "rgb":
        image = image.convert("RGB")
    format_name, quality = "PNG", 90
    if preview:
        kind, _, level = preview.partition(";")
        format_name = {"webp": "WEBP", "jpeg": "JPEG"}.get(kind.lower(), "PNG")
        quality = int(level) if level.isdigit() else 90
    if format_name == "JPEG":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=format_name, quality=quality)
    return buffer.getvalue(), f"image/{format_name.lower()}"


def _apply_alpha(original_path, mask: Image.Image) -> bytes:
    with Image.open(original_path) as opened:
        original = opened.convert("RGBA")
    alpha = mask.convert("RGBA").getchannel("A").resize(original.size, Image.Resampling.LANCZOS)
    original.putalpha(alpha)
    buffer = io.BytesIO()
    original.save(buffer, format="PNG")
    return buffer.getvalue()
