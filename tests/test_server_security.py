"""Refusals: paths outside their folders, oversized and non-image uploads, non-loopback binds without a
token, requests without the token; and fuzzed bodies (hypothesis) never get a 500."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import zlib

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lienzo.errors import InvalidArgumentError
from lienzo.server import ServerConfig
from server_client import b64_png, call, multipart, png_bytes, serve
from test_cli_generate import run_cli

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    handle = serve(tmp_path_factory.mktemp("security"), max_upload_mb=0.05)
    yield handle
    handle.stop()


def upload(server, content: bytes, filename: str = "x.png", **fields) -> tuple[int, object]:
    body, headers = multipart(fields, {"image": (filename, content)})
    return call(f"{server.url}/upload/image", data=body, headers=headers)


def test_uploads_are_stored_in_the_input_folder_and_viewable(server):
    status, answer = upload(server, png_bytes(Image.new("RGB", (8, 8), (255, 0, 0))), "red.png")
    assert status == 200 and answer == {"name": "red.png", "subfolder": "", "type": "input"}
    stored = server.context.config.input_dir / "red.png"
    assert stored.stat().st_mode & 0o777 == 0o644
    status, other = upload(server, png_bytes(Image.new("RGB", (8, 8), (0, 0, 255))), "red.png")
    assert other["name"] == "red (1).png"
    status, data = call(f"{server.url}/view?filename=red.png&type=input")
    assert status == 200 and Image.open(io.BytesIO(data)).getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    "query",
    [
        "filename=../queue.sqlite3&type=input",
        "filename=x.png&subfolder=../../state&type=output",
        "filename=%2Fetc%2Fpasswd",
        "filename=passwd&subfolder=%2Fetc",
        "filename=..%2F..%2Fetc%2Fpasswd",
    ],
)
def test_view_refuses_paths_outside_its_folders(server, query):
    status, _ = call(f"{server.url}/view?{query}")
    assert status in (400, 403)


def test_a_symlink_out_of_the_output_folder_is_refused(server, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(Image.new("RGB", (4, 4))))
    link = server.context.config.output_dir / "link.png"
    link.symlink_to(secret)
    (server.context.config.output_dir / "linkdir").symlink_to(tmp_path)
    assert call(f"{server.url}/view?filename=link.png")[0] == 403
    assert call(f"{server.url}/view?filename=secret.png&subfolder=linkdir")[0] == 403
    assert (
        upload(server, png_bytes(Image.new("RGB", (4, 4))), "y.png", type="output", subfolder="linkdir")[0]
        == 403
    )


@pytest.mark.parametrize(
    "fields,filename",
    [
        ({"subfolder": "../escape"}, "x.png"),
        ({"subfolder": "/tmp"}, "x.png"),
        ({}, "../x.png"),
        ({"type": "nowhere"}, "x.png"),
    ],
)
def test_uploads_refuse_names_outside_the_folder(server, fields, filename):
    status, _ = upload(server, png_bytes(Image.new("RGB", (4, 4))), filename, **fields)
    assert status in (400, 403)


def test_oversized_non_image_and_bomb_uploads_are_refused(server):
    big = png_bytes(Image.effect_noise((256, 256), 64))
    assert len(big) > server.context.config.max_upload_bytes
    assert upload(server, big)[0] == 413
    status, answer = upload(server, b"GIF89a not really an image")
    assert status == 400 and "image" in answer["error"]["message"]
    status, answer = upload(server, bomb_png(9000, 9000))
    assert status == 400 and "pixel limit" in answer["error"]["message"]
    status, answer = upload(server, bomb_png(20000, 20000))
    assert status == 400 and "decompression bomb" in answer["error"]["message"]
    status, answer = call(f"{server.url}/sdapi/v1/img2img", {"init_images": ["bm90IGFuIGltYWdl"]})
    assert status == 400


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_models_outside_the_models_root_are_refused(server):
    status, answer = call(f"{server.url}/sdapi/v1/options", {"sd_model_checkpoint": "/etc/passwd"})
    assert status == 400
    status, answer = call(
        f"{server.url}/sdapi/v1/txt2img",
        {"override_settings": {"sd_model_checkpoint": "../../secret"}, "steps": 1},
    )
    assert status in (400, 404)


def test_a_non_loopback_bind_needs_a_token_or_insecure(tmp_path):
    with pytest.raises(InvalidArgumentError, match="--token"):
        ServerConfig(output_dir=tmp_path, host="0.0.0.0")
    assert ServerConfig(output_dir=tmp_path, host="0.0.0.0", token=TOKEN).token == TOKEN
    assert ServerConfig(output_dir=tmp_path, host="0.0.0.0", insecure=True).insecure
    result = run_cli(["serve", "--host", "0.0.0.0", "--port", "0"], tmp_path)
    assert result.returncode == 1 and "--token" in result.stderr and "Traceback" not in result.stderr


def test_with_a_token_every_request_and_the_websocket_need_it(tmp_path):
    handle = serve(tmp_path, token=TOKEN)
    try:
        assert call(f"{handle.url}/queue")[0] == 401
        assert call(f"{handle.url}/queue", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert call(f"{handle.url}/queue", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert call(f"{handle.url}/sdapi/v1/options?token={TOKEN}")[0] == 200
        assert call(f"{handle.url}/sdapi/v1/options")[0] == 401
        assert asyncio.run(websocket_status(f"{handle.url}/ws")) == 401
        assert asyncio.run(websocket_status(f"{handle.url}/ws?token={TOKEN}")) == 101
    finally:
        handle.stop()


async def websocket_status(url: str) -> int:
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url) as socket:
                await socket.receive_json()
                return 101
        except aiohttp.WSServerHandshakeError as error:
            return error.status


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
A1111_KEYS = st.sampled_from(
    [
        "prompt",
        "steps",
        "width",
        "height",
        "seed",
        "sampler_name",
        "scheduler",
        "batch_size",
        "n_iter",
        "cfg_scale",
        "enable_hr",
        "hr_scale",
        "subseed_strength",
        "override_settings",
        "init_images",
        "mask",
        "inpainting_fill",
        "eta",
        "extra",
    ]
)
CHEAP = {"steps": 1, "width": 64, "height": 64}
"""Fuzzed A1111 bodies start from these, so one that happens to be valid is a quick job."""
COMFY_KEYS = st.sampled_from(["prompt", "client_id", "prompt_id", "number", "front", "extra_data"])
ROUTES = [
    ("/prompt", COMFY_KEYS),
    ("/sdapi/v1/txt2img", A1111_KEYS),
    ("/sdapi/v1/img2img", A1111_KEYS),
    ("/queue", COMFY_KEYS),
    ("/history", COMFY_KEYS),
    ("/interrupt", COMFY_KEYS),
    ("/api/jobs/cancel", COMFY_KEYS),
    ("/sdapi/v1/png-info", A1111_KEYS),
]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(ROUTES), data=st.data())
def test_fuzzed_bodies_never_get_a_500(server, route, data):
    path, keys = route
    body = data.draw(st.one_of(JSON_VALUES, st.dictionaries(keys, JSON_VALUES, max_size=6)))
    if path.startswith("/sdapi/v1/") and isinstance(body, dict):
        body = {**CHEAP, **body}
    if path == "/prompt" and isinstance(body, dict) and isinstance(body.get("prompt"), dict):
        body["prompt"] = data.draw(
            st.dictionaries(
                st.sampled_from(["1", "2"]),
                st.fixed_dictionaries(
                    {
                        "class_type": st.sampled_from(["KSampler", "SaveImage", "VAEDecode", "Nope"]),
                        "inputs": st.dictionaries(
                            st.sampled_from(["images", "samples", "vae", "seed"]), JSON_VALUES
                        ),
                    }
                ),
            )
        )
    status, answer = call(f"{server.url}{path}", data=json.dumps(body).encode(), timeout=120)
    assert status < 500, (path, body, answer)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=64), query=st.text(max_size=12))
def test_fuzzed_raw_bodies_and_queries_never_get_a_500(server, raw, query):
    assert call(f"{server.url}/prompt", data=raw)[0] < 500
    assert call(f"{server.url}/sdapi/v1/png-info", data=raw)[0] < 500
    from urllib.parse import quote

    assert call(f"{server.url}/view?filename={quote(query)}&subfolder={quote(query)}")[0] < 500
    assert call(f"{server.url}/userdata/{quote(query, safe='')}")[0] < 500 if query.strip("./") else True


def test_an_inpainting_request_with_images_passes_the_upload_checks(server):
    square = b64_png(Image.new("RGB", (64, 64)))
    status, answer = call(
        f"{server.url}/sdapi/v1/img2img",
        {"init_images": [square], "mask": "data:image/png;base64," + square, "inpainting_fill": 3},
    )
    assert status == 400 and "inpainting_fill" in answer["detail"]
