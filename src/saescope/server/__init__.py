"""The local web app (``saescope serve``): feature pages, search by text, steering playground. See app.py."""
from __future__ import annotations

from .app import ServerConfig, bind_socket, create_app, serve

__all__ = ["ServerConfig", "bind_socket", "create_app", "serve"]
