"""``dictionary_learning`` (saprmarks/dictionary_learning): ``ae.pt`` + ``config.json`` (``{"trainer": {...}}``).

============================  ====================================================  ==========================
dict_class                    tensors                                               saescope
============================  ====================================================  ==========================
AutoEncoder                   encoder.weight/.bias, decoder.weight, bias            relu, b_dec subtracted
AutoEncoderTopK               encoder.weight/.bias, decoder.weight, b_dec, k,       topk, b_dec subtracted
                              threshold (unused by its encode)
BatchTopKSAE                  as AutoEncoderTopK                                    batchtopk = relu(pre)*1[pre>t]
MatryoshkaBatchTopKSAE        W_enc, b_enc, W_dec, b_dec, k, threshold,             batchtopk, matryoshka_widths
                              group_sizes                                           = cumsum(group_sizes)
JumpReluAutoEncoder           W_enc, b_enc, W_dec, b_dec, threshold                 jumprelu, b_dec not subtracted
GatedAutoEncoder              encoder.weight, r_mag, gate_bias, mag_bias,           gated, b_dec subtracted
                              decoder.weight, decoder_bias
============================  ====================================================  ==========================

``encoder.weight`` is ``[d_sae, d_in]`` (``W_enc = encoder.weight.T``), ``decoder.weight`` is ``[d_in, d_sae]``.
The class comes from ``config.json`` (``trainer.dict_class``) or from ``architecture=``; it is never inferred
from the tensor names (AutoEncoderTopK and BatchTopKSAE save identical key sets, and read one as the other
changes the features). The hook comes from ``trainer.submodule_name`` (see ``HOOKS``); unknown names leave
it unknown.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ...errors import CheckpointError, ConfigError
from ..config import SAEConfig, SAEMetadata
from .common import LazyTensor, cfg_dict, cfg_int, is_tensor, materialize, pt_index, read_json

log = logging.getLogger(__name__)

AE = "ae.pt"
CLASSES = {"AutoEncoder": "relu", "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk",
           "MatryoshkaBatchTopKSAE": "batchtopk", "JumpReluAutoEncoder": "jumprelu", "GatedAutoEncoder": "gated"}
# submodule names used by dictionary_learning's demo/SAEBench scripts (``resid_post_layer_L``) and by the
# feature-circuits dictionaries (``resid_L``, ``attn_L``, ``mlp_L``, ``embed``), read as module *outputs*
HOOKS = [(re.compile(r"resid_post_layer_(\d+)|resid_(\d+)"), "blocks.{}.hook_resid_post"),
         (re.compile(r"resid_pre_layer_(\d+)"), "blocks.{}.hook_resid_pre"),
         (re.compile(r"mlp_out_layer_(\d+)|mlp_layer_(\d+)|mlp_(\d+)"), "blocks.{}.hook_mlp_out"),
         (re.compile(r"attn_out_layer_(\d+)|attn_layer_(\d+)|attn_(\d+)"), "blocks.{}.hook_attn_out"),
         (re.compile(r"embed"), "hook_embed")]


def detect(path: Path) -> bool:
    return path.is_dir() and (path / AE).is_file()


def hook_for(submodule: str | None, io: str | None) -> str | None:
    """TransformerLens hook of a dictionary_learning ``submodule_name`` (output side), or None when unknown."""
    if not isinstance(submodule, str) or io not in (None, "out"):
        return None
    for pattern, hook in HOOKS:
        m = pattern.fullmatch(submodule)
        if m:
            layer = next((g for g in m.groups() if g is not None), None)
            return hook.format(layer) if layer is not None else hook
    return None


def _class(trainer: dict, architecture: str | None, state: dict, file: Path) -> str:
    cls = trainer.get("dict_class")
    if cls is not None:
        if not isinstance(cls, str) or cls not in CLASSES:
            raise CheckpointError(f"{file}: unsupported dictionary_learning class {str(cls)[:60]!r} "
                                  f"(saescope reads {', '.join(CLASSES)})")
        return cls
    if architecture is None:
        raise CheckpointError(f"{file}: the checkpoint does not say its architecture (no config.json with "
                              f"trainer.dict_class beside it); pass architecture= (relu, topk, batchtopk, jumprelu, "
                              f"gated) to SAE.load, or --architecture to the CLI")
    if architecture == "batchtopk":
        return "MatryoshkaBatchTopKSAE" if "group_sizes" in state else "BatchTopKSAE"
    return {v: k for k, v in CLASSES.items() if k != "MatryoshkaBatchTopKSAE"}[architecture]


def _get(state: dict, file: Path, name: str, transpose: bool = False):
    t = state.get(name)
    if t is None:
        return None
    if not is_tensor(t):
        raise CheckpointError(f"{file}: {name!r} is not a tensor")
    if transpose:
        if t.ndim != 2:
            raise CheckpointError(f"{file}: tensor {name!r} has shape {list(t.shape)}, expected 2-D")
        return t.T
    return t


def _scalar_int(value, what: str, lo: int, hi: int) -> int:
    if value is None:
        raise CheckpointError(f"{what}: missing (neither the state dict nor config.json gives it)")
    if is_tensor(value):
        if value.numel() != 1 or value.is_floating_point() or value.dtype == torch.bool:
            raise CheckpointError(f"{what}: expected an integer scalar tensor")
        value = int(materialize(value).reshape(()).item())
    return cfg_int({"v": value}, "v", what, lo=lo, hi=hi)


def read(path: Path, architecture: str | None = None, state: dict | None = None) -> tuple[SAEConfig, dict, None]:
    path = Path(path)
    file = path / AE if path.is_dir() else path
    state = pt_index(file) if state is None else state
    config = read_json(file.parent / "config.json") if (file.parent / "config.json").is_file() else {}
    trainer = cfg_dict(config, "trainer", file.parent / "config.json")
    buffer = cfg_dict(config, "buffer", file.parent / "config.json")
    cls = _class(trainer, architecture, state, file)
    arch = CLASSES[cls]
    names = {"W_enc": ("W_enc", False), "W_dec": ("W_dec", False)} if "W_enc" in state else \
        {"W_enc": ("encoder.weight", True), "W_dec": ("decoder.weight", True)}
    W_enc, W_dec = (_get(state, file, *names[n]) for n in ("W_enc", "W_dec"))
    if W_enc is None or W_dec is None or W_enc.ndim != 2:
        raise CheckpointError(f"{file}: missing encoder/decoder weights for a {cls}")
    d_in, d_sae = (int(d) for d in W_enc.shape)
    b_dec = next((t for t in (_get(state, file, n) for n in ("b_dec", "bias", "decoder_bias")) if t is not None), None)
    out = {"W_enc": W_enc, "W_dec": W_dec, "b_dec": b_dec}
    if arch == "gated":
        out.update(b_gate=_get(state, file, "gate_bias"), b_mag=_get(state, file, "mag_bias"), r_mag=_get(state, file, "r_mag"))
    else:
        out["b_enc"] = _get(state, file, "b_enc") if "b_enc" in state else _get(state, file, "encoder.bias")
    k = widths = None
    if arch in ("topk", "batchtopk"):
        k = _scalar_int(state["k"] if "k" in state else trainer.get("k"), f"{file}: k", 1, d_sae)
    if arch in ("jumprelu", "batchtopk"):
        out["threshold"] = _threshold(_get(state, file, "threshold"), d_sae, cls, file)
    if cls == "MatryoshkaBatchTopKSAE":
        widths = _widths(_get(state, file, "group_sizes"), d_sae, file)
    out = {k_: v for k_, v in out.items() if v is not None}
    hook = hook_for(trainer.get("submodule_name"), buffer.get("io"))
    if hook is None:
        log.info("%s: submodule %r (io %r) has no known TransformerLens hook; the SAE's hook is unknown", file,
                 trainer.get("submodule_name"), buffer.get("io"))
    extra = {"source_format": "dictionary_learning", "dict_class": cls}
    if isinstance(trainer.get("submodule_name"), str):
        extra["submodule_name"] = trainer["submodule_name"]
    meta = {"hook_name": hook, "model_name": trainer.get("lm_name") if isinstance(trainer.get("lm_name"), str) else None,
            "extra": extra}
    try:
        cfg = SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, k=k, apply_b_dec_to_input=(arch != "jumprelu"),
                        matryoshka_widths=widths, metadata=SAEMetadata.from_dict(meta))
    except ConfigError as exc:
        raise CheckpointError(f"{file}: {exc}") from None
    return cfg, out, None


def _threshold(t, d_sae: int, cls: str, file: Path):
    if t is None:
        raise CheckpointError(f"{file}: {cls} without a threshold")
    if t.ndim == 0:  # BatchTopK: one threshold for every latent
        if isinstance(t, LazyTensor):
            return t.map(lambda v: v.expand(d_sae).clone(), shape=(d_sae,))
        return t.expand(d_sae).clone()
    return t


def _widths(t, d_sae: int, file: Path) -> tuple[int, ...]:
    if t is None or t.ndim != 1 or t.is_floating_point() or not 0 < t.numel() <= 64:
        raise CheckpointError(f"{file}: MatryoshkaBatchTopKSAE needs a 1-D integer group_sizes tensor")
    sizes = [int(v) for v in materialize(t).tolist()]
    if any(s <= 0 for s in sizes) or sum(sizes) != d_sae:
        raise CheckpointError(f"{file}: group_sizes {sizes[:8]} must be positive and sum to d_sae={d_sae}")
    out, total = [], 0
    for s in sizes:
        total += s
        out.append(total)
    return tuple(out)
