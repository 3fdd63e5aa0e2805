"""Per-layer transcoders in the circuit-tracer layout (``mwhanna/qwen3-*-transcoders*``): ``layer_L.safetensors``
per layer, with ``wandb-config.yaml`` (or the misspelt ``wanb-config.yaml``: ``d_model``, ``d_feature``) and
an optional ``config.yaml`` (``model_name``) at the repo root.

Tensors: ``W_enc [d_sae, d_in]`` (transposed w.r.t. SAELens), ``W_dec [d_sae, d_out]``, ``b_enc``, ``b_dec``;
optionally ``activation_function.threshold [d_sae]`` (JumpReLU, ``pre * 1[pre > t]``; negative thresholds are
refused, see ``families.nonnegative_threshold``) and ``W_skip [d_out, d_in]``:

    f = relu(x @ W_enc.T + b_enc)        y = f @ W_dec + b_dec (+ x @ W_skip.T)

Hooks (SAELens's facts): ``blocks.L.mlp.hook_in`` (the MLP's input, after its norm) -> ``blocks.L.hook_mlp_out``.
"""
from __future__ import annotations

from pathlib import Path

from ..._checks import MAX_DIM, checked_int
from ...errors import CheckpointError
from ..config import SAEConfig, SAEMetadata
from .common import load_safetensors
from .families import (dtype_of, layer_of, no_other_keys, nonnegative_threshold, read_yaml, repo_root,
                       tensor)

WANDB = ("wandb-config.yaml", "wanb-config.yaml")
THRESHOLD = "activation_function.threshold"


def files(path: str) -> list[tuple[str, bool]]:
    return [(path, True), (WANDB[0], False), (WANDB[1], False), ("config.yaml", False)]


def _wandb_sizes(root: Path, source) -> tuple[int, int]:
    for name in WANDB:
        if (root / name).is_file():
            wb = read_yaml(root / name)
            try:
                d_model, d_feature = wb["d_model"]["value"], wb["d_feature"]["value"]
            except (KeyError, TypeError):
                raise CheckpointError(f"{root / name}: missing d_model.value or d_feature.value") from None
            return (checked_int(d_model, f"{root / name}: d_model", lo=1, hi=MAX_DIM, error=CheckpointError),
                    checked_int(d_feature, f"{root / name}: d_feature", lo=1, hi=MAX_DIM, error=CheckpointError))
    raise CheckpointError(f"{source}: no {WANDB[0]} (or {WANDB[1]}) at the repo root")


def read(local: Path, info: dict):
    path = str(info.get("path") or local.name)
    root = repo_root(local, path, info)
    state = load_safetensors(local)
    no_other_keys(state, ("W_enc", "W_dec", "b_enc", "b_dec", "W_skip", THRESHOLD), local)
    if "k" in state:
        raise CheckpointError(f"{local}: TopK transcoders of this layout are not supported")
    W_enc, W_dec = tensor(state, "W_enc", local, 2), tensor(state, "W_dec", local, 2)
    d_sae, d_in = W_enc.shape
    d_model, d_feature = _wandb_sizes(root, local)
    if (d_in, d_sae) != (d_model, d_feature):
        raise CheckpointError(f"{local}: W_enc has shape {list(W_enc.shape)}, the wandb config says "
                              f"[{d_feature}, {d_model}]")
    layer = layer_of(Path(path).name, r"_(\d+)\.safetensors$", str(local))
    meta = {"hook_name": info.get("hook_name") or f"blocks.{layer}.mlp.hook_in",
            "hook_name_out": info.get("hook_name_out") or f"blocks.{layer}.hook_mlp_out",
            "extra": {"source_format": "plt_transcoder", "layer": layer}}
    if (root / "config.yaml").is_file():
        base = read_yaml(root / "config.yaml")
        if isinstance(base.get("model_name"), str):
            meta["model_name"] = base["model_name"]
    out = {"W_enc": W_enc.T, "W_dec": W_dec, "b_enc": tensor(state, "b_enc", local), "b_dec": tensor(state, "b_dec", local)}
    arch = "relu"
    if THRESHOLD in state:
        arch, out["threshold"] = "jumprelu", nonnegative_threshold(tensor(state, THRESHOLD, local).reshape(-1), local)
    if "W_skip" in state:
        out["W_skip"] = tensor(state, "W_skip", local, 2)
    cfg = SAEConfig(architecture=arch, d_in=int(d_in), d_sae=int(d_sae), d_out=int(W_dec.shape[1]),
                    skip="W_skip" in out, apply_b_dec_to_input=False, dtype=dtype_of(W_enc),
                    metadata=SAEMetadata.from_dict(meta))
    return cfg, out, None
