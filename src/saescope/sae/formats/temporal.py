"""Temporal SAEs (``canrager/temporalSAEs``): refused, with the reason.

A temporal SAE splits each activation ``x_t`` into a part predicted by attention over the codes of the
previous tokens ``x_0 .. x_{t-1}`` and a sparse code of the rest; its features at token ``t`` depend on the
whole context. saescope's SAE maps one activation to one code, so it cannot express this, and loading the
weights as a per-token SAE would give wrong features without any warning.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError

REASON = ("temporal SAEs encode each token with attention over the previous tokens' codes; saescope's SAE "
          "maps one activation to one code and cannot express that (refused rather than loaded wrong)")


def files(path: str) -> list[tuple[str, bool]]:
    return []


def read(local: Path, info: dict):
    raise CheckpointError(f"{info.get('path') or local}: {REASON}")
