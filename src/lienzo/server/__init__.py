"""`lienzo serve`: ComfyUI's and A1111's HTTP APIs over one persistent job queue (see docs/server.md)."""

from lienzo.server.app import ServerHandle, build_app, start_server
from lienzo.server.config import ServerConfig

__all__ = ["ServerConfig", "ServerHandle", "build_app", "start_server"]
