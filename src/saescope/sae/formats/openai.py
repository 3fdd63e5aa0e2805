"""OpenAI ``sparse_autoencoder`` state dicts (``.pt``), e.g. the GPT-2 small v5 32k/128k SAEs.

Keys: ``pre_bias [d_in]``, ``encoder.weight [d_sae, d_in]``, ``latent_bias [d_sae]``,
``decoder.weight [d_in, d_sae]``, stats buffers (ignored), ``activation`` ("TopK" or "ReLU") and
``activation_state_dict`` (``{"k": ...}``). Their math, for a TopK checkpoint:

    x', (mu, std) = LN(x)              subtract the mean, divide by the unbiased std + 1e-5
    f = relu(topk(W_e (x' - pre_bias) + latent_bias))
    x_hat = (W_d f + pre_bias) * std + mu

ReLU checkpoints skip the layer norm. In saescope terms: transform ``layer_norm`` (TopK only),
``apply_b_dec_to_input``, ``W_enc = encoder.weight.T``, ``W_dec = decoder.weight.T``, ``b_dec = pre_bias``.
A missing ``activation`` means ReLU and the layer norm goes with TopK: both are the rules of OpenAI's own
``Autoencoder.from_state_dict``, not guesses.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError, ConfigError
from ..config import SAEConfig, SAEMetadata
from .common import cfg_dict, cfg_int, is_tensor, pt_index

KEYS = ("pre_bias", "encoder.weight", "latent_bias", "decoder.weight")


def is_openai_state(state: dict) -> bool:
    return all(k in state for k in KEYS)


def read(path: Path, state: dict | None = None) -> tuple[SAEConfig, dict, None]:
    path = Path(path)
    state = pt_index(path) if state is None else state
    if not is_openai_state(state):
        raise CheckpointError(f"{path}: not an OpenAI sparse_autoencoder state dict (needs {', '.join(KEYS)})")
    for key in KEYS:
        if not is_tensor(state[key]):
            raise CheckpointError(f"{path}: {key!r} is not a tensor")
    if state["encoder.weight"].ndim != 2 or state["decoder.weight"].ndim != 2:
        raise CheckpointError(f"{path}: encoder.weight and decoder.weight must be 2-D")
    d_sae, d_in = (int(d) for d in state["encoder.weight"].shape)
    activation = state.get("activation", "ReLU")
    if activation == "TopK":
        k = cfg_int(cfg_dict(state, "activation_state_dict", path), "k", f"{path}: activation_state_dict", hi=d_sae)
        arch, transform = "topk", "layer_norm"
    elif activation == "ReLU":
        k, arch, transform = None, "relu", "none"
    else:
        raise CheckpointError(f"{path}: unsupported activation {str(activation)[:40]!r} (saescope reads TopK and ReLU)")
    try:
        cfg = SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, k=k, apply_b_dec_to_input=True,
                        input_transform=transform, metadata=SAEMetadata(extra={"source_format": "openai"}))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    out = {"W_enc": state["encoder.weight"].T, "b_enc": state["latent_bias"],
           "W_dec": state["decoder.weight"].T, "b_dec": state["pre_bias"]}
    return cfg, out, None
