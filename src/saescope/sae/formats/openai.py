"""OpenAI ``sparse_autoencoder`` state dicts (``.pt``), e.g. the GPT-2 small v5 32k/128k SAEs.

Keys: ``pre_bias [d_in]``, ``encoder.weight [d_sae, d_in]``, ``latent_bias [d_sae]``,
``decoder.weight [d_in, d_sae]``, stats buffers (ignored), ``activation`` ("TopK" or "ReLU") and
``activation_state_dict`` (``{"k": ...}``). Their math, for a TopK checkpoint:

    x', (mu, std) = LN(x)              subtract the mean, divide by the unbiased std + 1e-5
    f = relu(topk(W_e (x' - pre_bias) + latent_bias))
    x_hat = (W_d f + pre_bias) * std + mu

ReLU checkpoints skip the layer norm. In saescope terms: transform ``layer_norm`` (TopK only),
``apply_b_dec_to_input``, ``W_enc = encoder.weight.T``, ``W_dec = decoder.weight.T``, ``b_dec = pre_bias``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ...errors import CheckpointError
from ..config import SAEConfig, SAEMetadata
from .common import load_pt

KEYS = ("pre_bias", "encoder.weight", "latent_bias", "decoder.weight")


def is_openai_state(state: dict) -> bool:
    return all(k in state for k in KEYS)


def read(path: Path, state: dict | None = None) -> tuple[SAEConfig, dict, None]:
    path = Path(path)
    state = load_pt(path) if state is None else state
    if not is_openai_state(state):
        raise CheckpointError(f"{path}: not an OpenAI sparse_autoencoder state dict (needs {', '.join(KEYS)})")
    for key in KEYS:
        if not isinstance(state[key], torch.Tensor):
            raise CheckpointError(f"{path}: {key!r} is not a tensor")
    d_sae, d_in = state["encoder.weight"].shape
    activation = state.get("activation", "ReLU")
    if activation == "TopK":
        k = (state.get("activation_state_dict") or {}).get("k")
        if not isinstance(k, int):
            raise CheckpointError(f"{path}: TopK checkpoint without an integer activation_state_dict['k']")
        arch, transform = "topk", "layer_norm"
    elif activation == "ReLU":
        k, arch, transform = None, "relu", "none"
    else:
        raise CheckpointError(f"{path}: unsupported activation {activation!r} (saescope reads TopK and ReLU)")
    cfg = SAEConfig(architecture=arch, d_in=int(d_in), d_sae=int(d_sae), k=k, apply_b_dec_to_input=True,
                    input_transform=transform, metadata=SAEMetadata(extra={"source_format": "openai"}))
    out = {"W_enc": state["encoder.weight"].T, "b_enc": state["latent_bias"],
           "W_dec": state["decoder.weight"].T, "b_dec": state["pre_bias"]}
    return cfg, out, None
