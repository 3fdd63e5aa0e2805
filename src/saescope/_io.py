"""Crash-safe file writes shared by every layer: write a temp file beside the target, fsync, then os.replace.

A reader never sees a half-written file; a crash leaves at most a ``.<name>.*.tmp`` beside it.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, then replace ``path`` with it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: Path, obj, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent))


def publish(tmp: Path, path: Path) -> None:
    """Move a finished temp file (or directory) ``tmp`` written beside ``path`` onto it: flushed to disk first,
    so a crash leaves either the old ``path`` or the complete new one. For writers that need a real file to
    write into (SQLite, directory trees); everything else uses ``atomic_write_*``."""
    tmp, path = Path(tmp), Path(path)
    if tmp.is_file():
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
