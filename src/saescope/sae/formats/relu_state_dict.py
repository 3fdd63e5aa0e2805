"""A ReLU SAE saved as a plain ``.pt`` state dict of two ``nn.Linear`` layers (Goodfire, DeepSeek-R1 SAEs).

Tensors: ``<enc>.weight [d_sae, d_in]``, ``<enc>.bias``, ``<dec>.weight [d_in, d_sae]``, ``<dec>.bias``; no ``b_dec``
subtracted: ``f = relu(x @ enc.weight.T + enc.bias)``, ``x_hat = f @ dec.weight.T + dec.bias``. The hook is the
release's, else ``blocks.L.hook_resid_post`` with L from the file name.
"""
from __future__ import annotations

from pathlib import Path

from ..config import SAEConfig, SAEMetadata
from .common import load_pt
from .families import dtype_of, layer_of, no_other_keys, tensor


def files(path: str) -> list[tuple[str, bool]]:
    return [(path, True)]


def reader(enc: str, dec: str, layer_re: str, source_format: str):
    """The family's ``read(local, info)`` for linear layers named ``enc`` and ``dec``."""
    keys = (f"{enc}.weight", f"{enc}.bias", f"{dec}.weight", f"{dec}.bias")

    def read(local: Path, info: dict):
        state = load_pt(local)
        no_other_keys(state, keys, local)
        w_enc, w_dec = tensor(state, keys[0], local, 2), tensor(state, keys[2], local, 2)
        d_sae, d_in = w_enc.shape
        layer = None if info.get("hook_name") else layer_of(local.name, layer_re, str(local))
        hook = info.get("hook_name") or f"blocks.{layer}.hook_resid_post"
        meta = {"hook_name": hook, "extra": {"source_format": source_format}}
        cfg = SAEConfig(architecture="relu", d_in=int(d_in), d_sae=int(d_sae), apply_b_dec_to_input=False,
                        dtype=dtype_of(w_enc), metadata=SAEMetadata.from_dict(meta))
        out = {"W_enc": w_enc.T, "W_dec": w_dec.T, "b_enc": tensor(state, keys[1], local),
               "b_dec": tensor(state, keys[3], local)}
        return cfg, out, None

    return read
