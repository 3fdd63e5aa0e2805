"""``dictionary_learning`` (saprmarks/dictionary_learning): ``ae.pt`` + ``config.json`` (``{"trainer": {...}}``).

============================  ====================================================  ==========================
dict_class                    tensors                                               saescope
============================  ====================================================  ==========================
AutoEncoder                   encoder.weight/.bias, decoder.weight, bias            relu, b_dec subtracted
AutoEncoderTopK               encoder.weight/.bias, decoder.weight, b_dec, k        topk, b_dec subtracted
BatchTopKSAE (+Matryoshka)    as TopK (or W_enc/b_enc/W_dec), threshold (scalar)    batchtopk = relu(pre)*1[pre>t]
JumpReluAutoEncoder           W_enc, b_enc, W_dec, b_dec, threshold                 jumprelu, b_dec not subtracted
GatedAutoEncoder              encoder.weight, r_mag, gate_bias, mag_bias,           gated, b_dec subtracted
                              decoder.weight, decoder_bias
============================  ====================================================  ==========================

``encoder.weight`` is ``[d_sae, d_in]`` (``W_enc = encoder.weight.T``), ``decoder.weight`` is ``[d_in, d_sae]``.
Without a config.json the class is inferred from the tensor names.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ...errors import CheckpointError
from ..config import SAEConfig, SAEMetadata
from .common import load_pt, read_json

AE = "ae.pt"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / AE).is_file()


def _infer_class(state: dict) -> str:
    if "r_mag" in state:
        return "GatedAutoEncoder"
    if "W_enc" in state and "threshold" in state and state["threshold"].ndim == 1:
        return "JumpReluAutoEncoder"
    if "threshold" in state and "k" in state:
        return "BatchTopKSAE"
    if "k" in state:
        return "AutoEncoderTopK"
    if "bias" in state:
        return "AutoEncoder"
    raise CheckpointError("cannot tell the dictionary_learning class from the tensor names")


def _get(state: dict, *names: str, transpose: bool = False):
    for name in names:
        if name in state:
            t = state[name]
            if not isinstance(t, torch.Tensor):
                break
            return t.T if transpose else t
    return None


def read(path: Path) -> tuple[SAEConfig, dict, None]:
    path = Path(path)
    file = path / AE if path.is_dir() else path
    state = load_pt(file)
    trainer = {}
    if (file.parent / "config.json").is_file():
        trainer = read_json(file.parent / "config.json").get("trainer") or {}
    try:
        cls = trainer.get("dict_class") or _infer_class(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{file}: {exc}") from None
    W_enc = _get(state, "W_enc") if "W_enc" in state else _get(state, "encoder.weight", transpose=True)
    W_dec = _get(state, "W_dec") if "W_dec" in state else _get(state, "decoder.weight", transpose=True)
    if W_enc is None or W_dec is None or W_enc.ndim != 2:
        raise CheckpointError(f"{file}: missing encoder/decoder weights")
    d_in, d_sae = W_enc.shape
    out = {"W_enc": W_enc, "W_dec": W_dec,
           "b_dec": _get(state, "b_dec", "bias", "decoder_bias")}
    k = None
    apply_b_dec = True
    if cls == "AutoEncoder":
        arch = "relu"
    elif cls == "AutoEncoderTopK":
        arch = "topk"
    elif cls in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        arch = "batchtopk"
    elif cls == "JumpReluAutoEncoder":
        arch, apply_b_dec = "jumprelu", False
    elif cls == "GatedAutoEncoder":
        arch = "gated"
    else:
        raise CheckpointError(f"{file}: unsupported dictionary_learning class {cls!r}")
    if arch == "gated":
        out.update(b_gate=_get(state, "gate_bias"), b_mag=_get(state, "mag_bias"), r_mag=_get(state, "r_mag"))
    else:
        out["b_enc"] = _get(state, "b_enc", "encoder.bias")
    if arch in ("topk", "batchtopk"):
        k_t = state.get("k", trainer.get("k"))
        try:
            k = int(k_t.item() if isinstance(k_t, torch.Tensor) else k_t)
        except (TypeError, ValueError):
            raise CheckpointError(f"{file}: {cls} without an integer k") from None
    if arch in ("jumprelu", "batchtopk"):
        t = _get(state, "threshold")
        if t is None:
            raise CheckpointError(f"{file}: {cls} without a threshold")
        out["threshold"] = t.expand(d_sae).clone() if t.ndim == 0 else t
    out = {k_: v for k_, v in out.items() if v is not None}
    meta = {"extra": {"source_format": "dictionary_learning", "dict_class": cls}}
    if isinstance(trainer.get("lm_name"), str):
        meta["model_name"] = trainer["lm_name"]
    if isinstance(trainer.get("layer"), int):
        meta["hook_name"] = f"blocks.{trainer['layer']}.hook_resid_post"
    cfg = SAEConfig(architecture=arch, d_in=int(d_in), d_sae=int(d_sae), k=k, apply_b_dec_to_input=apply_b_dec,
                    metadata=SAEMetadata.from_dict(meta))
    return cfg, out, None
