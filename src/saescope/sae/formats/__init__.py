"""Checkpoint formats: detection and loading into an ``SAE``. One module per format; see docs/formats.md.

``load_sae(path)`` reads any of them; ``saelens.save_native`` writes the native (SAELens v6) layout.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ...errors import CheckpointError
from . import attn_z, dictionary_learning, gemma_scope, openai, saelens, sparsify
from . import families
from .common import load_pt

log = logging.getLogger(__name__)

FORMATS = ("saelens", "sparsify", "dictionary_learning", "gemma_scope", "openai", "attn_z")


def detect(path) -> str:
    """The format of ``path`` (a folder or a file), or CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file() and path.name in (saelens.WEIGHTS, saelens.CFG, sparsify.WEIGHTS, dictionary_learning.AE,
                                         gemma_scope.PARAMS):
        return detect(path.parent)
    if saelens.detect(path):
        return "saelens"
    if sparsify.detect(path):
        return "sparsify"
    if dictionary_learning.detect(path):
        return "dictionary_learning"
    if gemma_scope.detect(path):
        return "gemma_scope"
    for fmt in ("gemma_scope_2", "llama_scope", "qwen_scope"):  # release families recognisable by their layout
        if families.module(fmt).detect(path):
            return fmt
    if attn_z.detect(path):
        return "attn_z"
    if path.is_file() and path.suffix in (".pt", ".pth"):
        return "openai"  # confirmed by its keys when read
    if path.is_dir():
        pts = sorted(path.glob("*.pt"))
        if len(pts) == 1:
            return detect(pts[0])
        if (path / saelens.CFG).is_file():
            raise CheckpointError(f"{path}: has cfg.json but no {saelens.WEIGHTS} or {sparsify.WEIGHTS}")
    raise CheckpointError(f"{path}: not a recognised SAE checkpoint (formats: {', '.join(FORMATS)}; see docs/formats.md)")


def read(path, fmt: str | None = None, info: dict | None = None):
    """``(SAEConfig, state dict with SAELens names, log_sparsity or None, resolved path)``. With ``info`` (what
    the registry knows of a release's SAE) or a release-family format, the family reader is used (families.py)."""
    path = Path(path).expanduser()
    fmt = fmt or detect(path)
    if info is not None or fmt in families.NEW_FORMATS:
        cfg, state, sparsity = families.read(fmt, path, info)
        return cfg, state, sparsity, path
    if path.is_file() and fmt in ("saelens", "sparsify", "dictionary_learning") and path.suffix != ".pt":
        path = path.parent
    if fmt == "saelens":
        cfg, state, sparsity = saelens.read(path)
    elif fmt == "sparsify":
        cfg, state, sparsity = sparsify.read(path)
    elif fmt == "dictionary_learning":
        cfg, state, sparsity = dictionary_learning.read(path)
    elif fmt == "gemma_scope":
        cfg, state, sparsity = gemma_scope.read(path)
    elif fmt == "attn_z":
        cfg, state, sparsity = attn_z.read(path)
    elif fmt == "openai":
        file = path if path.is_file() else next(iter(sorted(path.glob("*.pt"))), path)
        raw = load_pt(file)
        if openai.is_openai_state(raw):
            cfg, state, sparsity = openai.read(file, raw)
        elif "encoder.weight" in raw or "W_enc" in raw:
            cfg, state, sparsity = dictionary_learning.read(file)
        else:
            raise CheckpointError(f"{file}: unknown .pt state dict (keys: {', '.join(list(map(str, raw))[:8])})")
        path = file
    else:
        raise CheckpointError(f"{path}: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return cfg, state, sparsity, path


def load_sae(path, device=None, dtype=None, fmt: str | None = None, info: dict | None = None):
    """Load an SAE from any supported format; sets ``sae.path`` and ``sae.log_sparsity``."""
    from ..model import SAE

    try:
        cfg, state, sparsity, resolved = read(path, fmt, info)
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError) as exc:
        # Loaders parse untrusted files: any malformed field that slips past their own checks is the file's fault.
        raise CheckpointError(f"{path}: malformed checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    if dtype is None and cfg.dtype in ("float16", "bfloat16") and torch.device(device or "cpu").type == "cpu":
        dtype = torch.float32  # half-precision matmuls on the CPU are slow (fp16: ~100x) and lossy; compute in fp32
        log.debug("%s: stored as %s, loaded as float32 on the CPU", resolved, cfg.dtype)
    sae = SAE.from_state_dict(cfg, state, device=device, dtype=dtype, source=str(resolved))
    sae.path = resolved if resolved.is_dir() else resolved.parent
    if sparsity is not None:
        sae.log_sparsity = sparsity.to(device or "cpu")
    log.debug("loaded %r from %s", sae, resolved)
    return sae
