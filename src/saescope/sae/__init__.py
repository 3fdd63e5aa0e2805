"""The math layer: SAE config and module, input transforms, checkpoint formats, pretrained registry.

Never imports ``saescope.lm``: an SAE carries its model/hook metadata as plain data. The module and the
transforms (which need torch) are imported on first use, so that reading the registry (``saescope list``)
stays torch-free.
"""
from __future__ import annotations

import importlib

from .config import SAEConfig, SAEMetadata

_LAZY = {"SAE": ".model", "SparseCode": ".model", "TransformState": ".transforms"}

__all__ = ["SAE", "SAEConfig", "SAEMetadata", "SparseCode", "TransformState"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'saescope.sae' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
