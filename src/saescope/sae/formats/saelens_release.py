"""SAELens-native releases (no conversion): ``<path>/cfg.json`` + ``sae_weights.safetensors`` (+ ``sparsity``).

Read by ``saelens.read``. One release fact is applied here: a per-SAE ``norm_scaling_factor`` ``s`` (from the
published release list) when the checkpoint says ``normalize_activations = expected_average_only_in`` (or a
legacy ``true``): the SAE was trained on ``x * s``, and ``s`` is folded into the weights exactly
(``W_enc * s``, ``W_dec / s``, ``b_dec / s``), as SAELens does when it loads the release.
"""
from __future__ import annotations

from pathlib import Path

from . import saelens
from .common import materialize, read_json
from .families import fold_norm_scale


def files(path: str) -> list[tuple[str, bool]]:
    p = path.rstrip("/")
    return [(f"{p}/{saelens.CFG}", True), (f"{p}/{saelens.WEIGHTS}", True), (f"{p}/{saelens.SPARSITY}", False)]


def expects_norm_scaling(raw: dict) -> bool:
    """Whether a SAELens cfg.json says the SAE takes dataset-norm-scaled inputs."""
    norm = raw.get("normalize_activations")
    return norm is True or norm == "expected_average_only_in"


def read(local: Path, info: dict):
    folder = local if local.is_dir() else local.parent
    cfg, state, sparsity = saelens.read(folder)
    s = info.get("norm_scaling_factor")
    if s is not None and expects_norm_scaling(read_json(folder / saelens.CFG)):
        state = fold_norm_scale({k: materialize(v).float() for k, v in state.items()}, s, folder / saelens.WEIGHTS)
        cfg = cfg.replace(dtype="float32", metadata={"extra": {**cfg.metadata.extra, "norm_scaling_factor_folded": s}})
    return cfg, state, sparsity
