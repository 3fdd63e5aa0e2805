"""Gemma Scope (Gemma 2) releases: ``layer_L/width_W/average_l0_N/params.npz`` (or ``embedding/...``).

Read by ``gemma_scope.read`` (JumpReLU, ``b_dec`` not subtracted). Release facts applied here:

* hooks from the repo: ``*-res`` -> ``blocks.L.hook_resid_post``, ``*-mlp`` -> ``blocks.L.hook_mlp_out``,
  ``*-att`` -> ``blocks.L.attn.hook_z`` (heads concatenated), ``embedding/`` -> ``hook_embed``;
* embedding SAEs were trained on the token embedding before Gemma's ``sqrt(d_model)`` scaling, while the
  ``hook_embed`` activation is after it: ``W_enc / sqrt(d_in)`` and ``W_dec * sqrt(d_in)`` (as SAELens does;
  ``b_dec`` is left unscaled, as there).
"""
from __future__ import annotations

import math
from pathlib import Path

from . import gemma_scope
from .common import materialize


def files(path: str) -> list[tuple[str, bool]]:
    return [(f"{path.rstrip('/')}/{gemma_scope.PARAMS}", True)]


def read(local: Path, info: dict):
    cfg, state, _ = gemma_scope.read(local)
    if "embedding" in str(info.get("path") or local).split("/"):
        root_d = math.sqrt(cfg.d_in)
        state = dict(state, W_enc=materialize(state["W_enc"]) / root_d, W_dec=materialize(state["W_dec"]) * root_d)
        cfg = cfg.replace(metadata={"hook_name": "hook_embed",
                                    "extra": {**cfg.metadata.extra, "embedding_scale_folded": root_d}})
    return cfg, state, None
