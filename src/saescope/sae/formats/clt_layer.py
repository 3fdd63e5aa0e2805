"""One layer of a cross-layer transcoder (CLT) in the circuit-tracer layout (``mntss/clt-*``), as a transcoder.

Repo root: ``config.yaml`` (``model_name``, ``feature_input_hook``, ``feature_output_hook``) and per layer ``L``
``W_enc_L.safetensors`` (``W_enc_L [d_sae, d_model]``, ``b_enc_L [d_sae]``, ``b_dec_L [d_model]``, optional
``threshold_L``) and ``W_dec_L.safetensors`` (``W_dec_L [d_sae, T, d_model]``, ``T = n_layers - L``). A layer-L
feature reads ``blocks.L.<input hook>`` and writes into the outputs of layers ``L, L+1, ..., L+T-1``;
``b_dec_L`` is the output bias of layer ``L``:

    f   = relu(x @ W_enc_L.T + b_enc_L)               (JumpReLU ``pre * 1[pre > t]`` with threshold_L)
    y_j = f @ W_dec_L[:, j] + b_dec_L * [j == 0]       contribution to blocks.(L+j).<output hook>

saescope loads this exactly as a transcoder with ``d_out = T * d_model``: ``W_dec = W_dec_L`` flattened to
``[d_sae, T * d_model]`` and ``b_dec = [b_dec_L, 0, ..., 0]``, so ``forward(x)`` is the concatenation
``[y_0, ..., y_{T-1}]``; ``metadata.extra["clt"]`` lists the target hooks, in that order. No single output hook
equals this layer's prediction: the reconstruction of layer ``M``'s output is the sum of the ``y`` of every
source layer ``L <= M`` (plus nothing else). SAELens instead sums the ``T`` decoders into one
``[d_sae, d_model]`` matrix (its decoder output is the sum of the chunks here).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ...errors import CheckpointError
from ..config import SAEConfig, SAEMetadata
from .common import load_safetensors
from .families import dtype_of, no_other_keys, nonnegative_threshold, read_yaml, repo_root, tensor


def files(path: str) -> list[tuple[str, bool]]:
    layer = str(path).strip("/")
    return [("config.yaml", True), (f"W_enc_{layer}.safetensors", True), (f"W_dec_{layer}.safetensors", True)]


def _layer_and_root(local: Path, info: dict) -> tuple[int, Path]:
    if info.get("path") is not None:
        text = str(info["path"]).strip("/")
        if not text.isdigit():
            raise CheckpointError(f"CLT layer path {text!r}: expected a layer number")
        return int(text), repo_root(local, text, info)
    m = re.fullmatch(r"W_(?:enc|dec)_(\d+)\.safetensors", local.name)
    if m is None:
        raise CheckpointError(f"{local}: give a W_enc_L.safetensors file of a CLT (or load it as RELEASE:SAE_ID)")
    return int(m.group(1)), local.parent


def read(local: Path, info: dict):
    layer, root = _layer_and_root(local, info)
    cfg_yaml = read_yaml(root / "config.yaml")
    hooks = [cfg_yaml.get("feature_input_hook"), cfg_yaml.get("feature_output_hook")]
    if not all(isinstance(h, str) and h for h in hooks):
        raise CheckpointError(f"{root / 'config.yaml'}: needs feature_input_hook and feature_output_hook")
    enc_file, dec_file = root / f"W_enc_{layer}.safetensors", root / f"W_dec_{layer}.safetensors"
    enc, dec = load_safetensors(enc_file), load_safetensors(dec_file)
    names = (f"W_enc_{layer}", f"b_enc_{layer}", f"b_dec_{layer}", f"threshold_{layer}")
    no_other_keys(enc, names, enc_file)
    no_other_keys(dec, (f"W_dec_{layer}",), dec_file)
    W_enc, W_dec = tensor(enc, names[0], enc_file, 2), tensor(dec, f"W_dec_{layer}", dec_file, 3)
    d_sae, d_model = W_enc.shape
    if W_dec.shape[0] != d_sae or W_dec.shape[2] != d_model:
        raise CheckpointError(f"{dec_file}: W_dec_{layer} has shape {list(W_dec.shape)}, expected "
                              f"[{d_sae}, n_targets, {d_model}]")
    n_targets = int(W_dec.shape[1])
    b_dec = tensor(enc, names[2], enc_file)
    out = {"W_enc": W_enc.T, "b_enc": tensor(enc, names[1], enc_file),
           "W_dec": W_dec.reshape(d_sae, n_targets * d_model),
           "b_dec": torch.cat([b_dec, b_dec.new_zeros((n_targets - 1) * d_model)])}
    arch = "relu"
    if names[3] in enc:
        arch, out["threshold"] = "jumprelu", nonnegative_threshold(tensor(enc, names[3], enc_file).reshape(-1), enc_file)
    targets = [f"blocks.{layer + j}.{hooks[1]}" for j in range(n_targets)]
    meta = {"hook_name": f"blocks.{layer}.{hooks[0]}", "hook_name_out": targets[0],
            "extra": {"source_format": "clt_layer",
                      "clt": {"layer": layer, "d_model": int(d_model), "target_hooks": targets}}}
    if isinstance(cfg_yaml.get("model_name"), str):
        meta["model_name"] = cfg_yaml["model_name"]
    cfg = SAEConfig(architecture=arch, d_in=int(d_model), d_sae=int(d_sae), d_out=n_targets * int(d_model),
                    apply_b_dec_to_input=False, dtype=dtype_of(W_enc), metadata=SAEMetadata.from_dict(meta))
    return cfg, out, None
