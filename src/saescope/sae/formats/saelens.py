"""SAELens folders (v6 and pre-6 "legacy" configs, inference and training checkpoints), which are also
saescope's native format.

    cfg.json                  the config; saescope adds its own config under the key "saescope"
    sae_weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out]
                              (+ threshold for jumprelu; b_gate, b_mag, r_mag instead of b_enc for gated;
                              W_skip [d_out, d_in] for skip transcoders)
    sparsity.safetensors      optional: "sparsity" [d_sae], log10 feature densities

Config parsing lives in ``saelens_cfg.py``; this module reads the weights and writes the native layout.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from ..._io import publish
from ...errors import CheckpointError
from ..config import SAEConfig
from .common import (LazyTensor, atomic_save_safetensors, atomic_write_json, check_state, make_temp_dir, materialize, read_json,
                     safetensors_index)
from .saelens_cfg import native_cfg_dict, parse_config

log = logging.getLogger(__name__)

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SPARSITY = "sparsity.safetensors"

__all__ = ["CFG", "WEIGHTS", "SPARSITY", "detect", "read", "parse_config", "native_cfg_dict", "save_native"]


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG).is_file() and (path / WEIGHTS).is_file()


def fix_state(cfg: SAEConfig, state: dict, flags: dict, source: Path) -> dict:
    """SAELens-named tensors as saescope computes with them, exactly: training-checkpoint thresholds
    (``topk_threshold`` scalar -> ``threshold [d_sae]``, ``log_threshold`` -> ``exp``), then, after checking every
    shape against the config (nothing large read yet), the legacy ``scaling_factor`` folded into ``W_dec`` rows
    and ``rescale_acts_by_decoder_norm`` folded into unit-norm decoder rows (as SAELens does on saving)."""
    state = dict(state)
    d_sae = cfg.d_sae
    if "threshold" not in state and "topk_threshold" in state:
        t = state.pop("topk_threshold")
        if t.ndim != 0:
            raise CheckpointError(f"{source}: topk_threshold has shape {list(t.shape)}, expected a scalar")
        state["threshold"] = t.map(lambda v: v.float().expand(d_sae).clone(), shape=(d_sae,)) if isinstance(t, LazyTensor) \
            else t.float().expand(d_sae).clone()
    if "threshold" not in state and "log_threshold" in state:
        t = state.pop("log_threshold")
        state["threshold"] = t.map(torch.exp) if isinstance(t, LazyTensor) else torch.exp(t)
    scales = {k: state.pop(k) for k in ("scaling_factor", "finetuning_scaling_factor") if k in state}
    check_state(cfg, state, str(source))
    for key, s in scales.items():
        if tuple(s.shape) != (d_sae,) or not s.is_floating_point():
            raise CheckpointError(f"{source}: tensor {key!r} has shape {list(s.shape)}, expected [d_sae]={d_sae}")
        s = materialize(s).float()
        if not bool(torch.isfinite(s).all()):
            raise CheckpointError(f"{source}: tensor {key!r} contains NaN or inf values")
        if not torch.allclose(s, torch.ones_like(s)):
            state["W_dec"] = _lazy_map(state["W_dec"], lambda w, s=s: w * s[:, None].to(w.dtype))
    if flags.get("rescale_by_decoder_norm"):
        W_dec = materialize(state["W_dec"]).float()
        norms = W_dec.norm(dim=-1)
        if not bool(torch.isfinite(norms).all()) or bool((norms == 0).any()):
            raise CheckpointError(f"{source}: rescale_acts_by_decoder_norm with a zero or non-finite decoder row")
        state["W_dec"] = W_dec.div_(norms[:, None])
        state["W_enc"] = _lazy_map(state["W_enc"], lambda w: w * norms[None, :].to(w.dtype))
        state["b_enc"] = _lazy_map(state["b_enc"], lambda b: b * norms.to(b.dtype))
    return state


def _lazy_map(t, fn):
    return t.map(fn) if isinstance(t, LazyTensor) else fn(t)


def read(path: Path) -> tuple[SAEConfig, dict, torch.Tensor | None]:
    path = Path(path)
    cfg, flags = parse_config(read_json(path / CFG), path / CFG)
    state = fix_state(cfg, safetensors_index(path / WEIGHTS), flags, path / WEIGHTS)
    log_sparsity = None
    if (path / SPARSITY).is_file():
        sp = safetensors_index(path / SPARSITY)
        t = sp.get("sparsity", next(iter(sp.values()), None))
        if t is not None and tuple(t.shape) == (cfg.d_sae,) and t.is_floating_point():
            log_sparsity = t.load().float()
        else:
            log.warning("%s: ignored (expected a [d_sae] tensor 'sparsity')", path / SPARSITY)
    return cfg, state, log_sparsity


def save_native(sae, path) -> None:
    """Write ``sae`` into directory ``path``: weights, sparsity, then cfg.json, each atomically.
    A fixed ``scale`` transform is folded into the written weights (exact), so SAELens reads the same SAE."""
    import copy

    from ..model import dtype_name, param_shapes

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    if sae.cfg.input_transform == "scale":
        sae = copy.deepcopy(sae)
        sae.fold_input_scale()
    cfg = sae.cfg.replace(dtype=dtype_name(sae.dtype))
    tensors = {name: getattr(sae, name).detach() for name in param_shapes(cfg)}
    write_folder(path, lambda tmp: _write_native(tmp, cfg, tensors, sae.log_sparsity))


def _write_native(path: Path, cfg: SAEConfig, tensors: dict, log_sparsity) -> None:
    atomic_save_safetensors(tensors, path / WEIGHTS, metadata={"format": "pt"})
    if log_sparsity is not None:
        atomic_save_safetensors({"sparsity": log_sparsity.detach().float()}, path / SPARSITY)
    atomic_write_json(path / CFG, native_cfg_dict(cfg))


def write_folder(path: Path, write) -> None:
    """Run ``write(folder)``: into ``path`` itself when it exists, else into a temporary folder beside it that
    is renamed onto ``path`` when complete (a new folder appears whole or not at all)."""
    fresh = not path.exists()
    if not fresh:
        write(path)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot create the directory ({exc.strerror})") from None
    tmp = make_temp_dir(path)
    try:
        write(tmp)
        publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
