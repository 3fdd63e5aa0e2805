"""dictionary_learning releases (SAEBench sets, andyrdt, Matryoshka): ``<path>/ae.pt`` + ``<path>/config.json``.

Read by ``dictionary_learning.read``; the config's ``trainer.dict_class`` picks the architecture (see that
module). The published loader needs the config, so it is required here too.
"""
from __future__ import annotations

from pathlib import Path

from . import dictionary_learning


def files(path: str) -> list[tuple[str, bool]]:
    p = path.rstrip("/")
    return [(f"{p}/config.json", True), (f"{p}/{dictionary_learning.AE}", True)]


def read(local: Path, info: dict):
    return dictionary_learning.read(local if local.is_dir() else local.parent)
