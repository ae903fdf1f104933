"""The sd-webui-controlnet extension's own routes, which A1111 clients call to fill their ControlNet menus
and preview a preprocessor: /controlnet/version, /controlnet/model_list, /controlnet/module_list and
/controlnet/detect."""

from __future__ import annotations

import asyncio

from aiohttp import web

from lienzo.errors import InvalidArgumentError
from lienzo.pipelines.controlnets import PREPROCESS_DEFAULTS
from lienzo.pipelines.preprocessors import preprocess
from lienzo.server.a1111_controlnet import MODULES, THRESHOLDS, thresholds
from lienzo.server.a1111_request import decode_image, encode_image
from lienzo.server.context import ServerContext, read_json

PREFIX = "/controlnet"
API_VERSION = 2
"""The extension's API version that its clients check for."""
MAX_DETECT_IMAGES = 8


def add_a1111_controlnet_routes(app: web.Application, context: ServerContext) -> None:
    """Register the /controlnet routes."""
    routes = ControlNetRoutes(context)
    app.router.add_get(PREFIX + "/version", routes.version)
    app.router.add_get(PREFIX + "/model_list", routes.model_list)
    app.router.add_get(PREFIX + "/module_list", routes.module_list)
    app.router.add_post(PREFIX + "/detect", routes.detect)


def module_detail(module: str) -> dict:
    """The extension's description of a preprocessor: its threshold sliders, and `model_free` False (the
    extension marks only modules that work without a ControlNet model, such as reference-only, which
    lienzo does not have)."""
    kind = MODULES[module]
    defaults = dict(PREPROCESS_DEFAULTS.get(kind, ()))
    sliders = [
        {"name": name.replace("_", " "), "value": defaults[name], "min": 0, "max": 255}
        for name in THRESHOLDS.get(kind, ())
    ]
    return {"model_free": False, "sliders": sliders}


class ControlNetRoutes:
    def __init__(self, context: ServerContext) -> None:
        self.context = context

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": API_VERSION})

    async def model_list(self, request: web.Request) -> web.Response:
        """The ControlNets and T2I-Adapters in the library (the built-in ones included), by name."""
        entries = self.context.config.library.list("controlnet")
        return web.json_response({"model_list": sorted({entry.name for entry in entries})})

    async def module_list(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"module_list": list(MODULES), "module_detail": {name: module_detail(name) for name in MODULES}}
        )

    async def detect(self, request: web.Request) -> web.Response:
        """Run one preprocessor on the posted images and answer with the control images."""
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidArgumentError("the request body must be a JSON object")
        module = str(body.get("controlnet_module", "none")).lower()
        if module not in MODULES:
            raise InvalidArgumentError(
                f"lienzo has no preprocessor {module!r}; use one of {', '.join(MODULES)}"
            )
        texts = body.get("controlnet_input_images")
        if not isinstance(texts, list) or not 1 <= len(texts) <= MAX_DETECT_IMAGES:
            raise InvalidArgumentError(
                f"controlnet_input_images must be a list of 1 to {MAX_DETECT_IMAGES} base64 images"
            )
        kind = MODULES[module]
        unit = {
            "threshold_a": body.get("controlnet_threshold_a"),
            "threshold_b": body.get("controlnet_threshold_b"),
        }
        options = {**dict(PREPROCESS_DEFAULTS.get(kind, ())), **dict(thresholds(unit, kind, "detect"))}
        if kind == "depth":
            options["models_dir"] = self.context.config.library.root
        images = [decode_image(text, f"controlnet_input_images[{index}]") for index, text in enumerate(texts)]
        detected = await asyncio.to_thread(
            lambda: [encode_image(preprocess(kind, image.convert("RGB"), **options)) for image in images]
        )
        return web.json_response({"images": detected, "info": "Success"})
