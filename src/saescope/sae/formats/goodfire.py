"""Goodfire Llama SAEs (``Goodfire/Llama-3.x-*-SAE-l{L}``): one ``.pt``/``.pth`` state dict.

Tensors: ``encoder_linear.weight [d_sae, d_in]``, ``encoder_linear.bias``, ``decoder_linear.weight
[d_in, d_sae]``, ``decoder_linear.bias``. ReLU, no ``b_dec`` subtracted:
``f = relu(x @ encoder.T + b_enc)``, ``x_hat = f @ decoder.T + b_dec``, on ``blocks.L.hook_resid_post``.
"""
from __future__ import annotations

from pathlib import Path

from ..config import SAEConfig, SAEMetadata
from .common import load_pt
from .families import dtype_of, layer_of, no_other_keys, tensor

KEYS = ("encoder_linear.weight", "encoder_linear.bias", "decoder_linear.weight", "decoder_linear.bias")

LAYER_RE = r"-l(\d+)\.pth?$"


def files(path: str) -> list[tuple[str, bool]]:
    return [(path, True)]


def read(local: Path, info: dict):
    state = load_pt(local)
    no_other_keys(state, KEYS, local)
    enc, dec = tensor(state, "encoder_linear.weight", local, 2), tensor(state, "decoder_linear.weight", local, 2)
    d_sae, d_in = enc.shape
    layer = None if info.get("hook_name") else layer_of(local.name, LAYER_RE, str(local))
    hook = info.get("hook_name") or f"blocks.{layer}.hook_resid_post"
    meta = {"hook_name": hook, "extra": {"source_format": "goodfire"}}
    cfg = SAEConfig(architecture="relu", d_in=int(d_in), d_sae=int(d_sae), apply_b_dec_to_input=False,
                    dtype=dtype_of(enc), metadata=SAEMetadata.from_dict(meta))
    out = {"W_enc": enc.T, "W_dec": dec.T, "b_enc": tensor(state, "encoder_linear.bias", local),
           "b_dec": tensor(state, "decoder_linear.bias", local)}
    return cfg, out, None
