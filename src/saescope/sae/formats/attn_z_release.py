"""Kissane & Krzyzanowski hook_z releases: ``NAME.pt`` beside ``NAME_cfg.json`` (read by ``attn_z.read``)."""
from __future__ import annotations

from pathlib import Path

from . import attn_z


def files(path: str) -> list[tuple[str, bool]]:
    return [(path[: -len(".pt")] + "_cfg.json", True), (path, True)]


def read(local: Path, info: dict):
    return attn_z.read(local)
