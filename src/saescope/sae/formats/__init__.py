"""Checkpoint formats: detection and loading into an ``SAE``. One module per format; see docs/formats.md.

``load_sae(path)`` reads any of them; ``saelens.save_native`` writes the native (SAELens v6) layout and
``sparsify.save_sparsify`` the sparsify one. Rules every reader follows:

* it validates what it reads (numbers through ``saescope._checks``, declared tensor sizes against the file
  and the config before anything is allocated) and raises ``CheckpointError`` itself: ``load_sae`` does not
  turn other exceptions into "malformed checkpoint" (those are bugs, and must surface as such);
* it never guesses: when a file cannot say its own architecture, it refuses and asks for ``architecture=``;
* a folder holding files of two formats is an error naming both (pass the file, or ``format=``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ...errors import CheckpointError, InputError
from ..config import ARCHITECTURES
from . import attn_z, dictionary_learning, families, gemma_scope, openai, saelens, sparsify
from .common import pt_index

log = logging.getLogger(__name__)

FORMATS = ("saelens", "sparsify", "dictionary_learning", "gemma_scope", "openai", "attn_z")

# A folder is of format F when F's detector says so; a file is of the format its name belongs to.
DIR_DETECTORS = {"saelens": saelens.detect, "sparsify": sparsify.detect,
                 "dictionary_learning": dictionary_learning.detect, "gemma_scope": gemma_scope.detect}
FILE_NAMES = {saelens.WEIGHTS: "saelens", sparsify.WEIGHTS: "sparsify", dictionary_learning.AE: "dictionary_learning",
              gemma_scope.PARAMS: "gemma_scope"}
_MAIN_FILE = {"saelens": saelens.WEIGHTS, "sparsify": sparsify.WEIGHTS, "dictionary_learning": dictionary_learning.AE,
              "gemma_scope": gemma_scope.PARAMS}


def detect(path) -> str:
    """The format of ``path`` (a folder or a file), or CheckpointError (also when two formats match)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        return _detect_file(path)
    found = [name for name, det in DIR_DETECTORS.items() if det(path)]
    if len(found) > 1:
        files = ", ".join(f"{name} ({_MAIN_FILE[name]})" for name in found)
        raise CheckpointError(f"{path}: holds checkpoints of {len(found)} formats: {files}; pass the file to load "
                              f"(e.g. {path / _MAIN_FILE[found[0]]}) or format='{found[0]}'")
    if found:
        return found[0]
    for fmt in ("gemma_scope_2", "llama_scope", "qwen_scope"):  # release families recognisable by their layout
        if families.module(fmt).detect(path):
            return fmt
    pts = sorted(path.glob("*.pt"))
    if len(pts) == 1:
        return detect(pts[0])
    if len(pts) > 1:
        raise CheckpointError(f"{path}: holds {len(pts)} .pt files ({', '.join(p.name for p in pts[:4])}); pass one")
    if (path / saelens.CFG).is_file():
        raise CheckpointError(f"{path}: has cfg.json but no {saelens.WEIGHTS} or {sparsify.WEIGHTS}")
    raise CheckpointError(f"{path}: not a recognised SAE checkpoint (formats: {', '.join(FORMATS)}; see docs/formats.md)")


def _detect_file(path: Path) -> str:
    if path.name in FILE_NAMES:
        return FILE_NAMES[path.name]
    if path.name == saelens.CFG:
        found = [name for name in ("saelens", "sparsify") if DIR_DETECTORS[name](path.parent)]
        if len(found) == 1:
            return found[0]
        if found:
            raise CheckpointError(f"{path}: cfg.json is shared by the saelens and sparsify files beside it; pass "
                                  f"{saelens.WEIGHTS} or {sparsify.WEIGHTS} instead")
    for fmt in ("gemma_scope_2", "llama_scope", "qwen_scope"):  # release families recognisable by their layout
        if families.module(fmt).detect(path):
            return fmt
    if attn_z.detect(path):
        return "attn_z"
    if path.suffix == ".npz":
        return "gemma_scope"
    if path.suffix in (".pt", ".pth"):
        return "openai"  # confirmed by its keys when read (or read as dictionary_learning)
    raise CheckpointError(f"{path}: not a recognised SAE checkpoint file (formats: {', '.join(FORMATS)})")


def read(path, fmt: str | None = None, architecture: str | None = None, info: dict | None = None):
    """``(SAEConfig, state dict with SAELens names, log_sparsity or None, resolved path)``; the state holds
    ``LazyTensor``s (read by ``SAE.from_state_dict``) or tensors. With ``info`` (what the registry knows of a
    release's SAE) or a release-family format, the family reader is used (``families.py``)."""
    path = Path(path).expanduser()
    if architecture is not None and architecture not in ARCHITECTURES:
        raise InputError(f"architecture: unknown value {architecture!r} (expected one of {', '.join(ARCHITECTURES)})")
    if fmt is not None and fmt not in FORMATS + families.NEW_FORMATS:
        raise CheckpointError(f"{path}: unknown format {fmt!r} (expected one of "
                              f"{', '.join(FORMATS + families.NEW_FORMATS)})")
    fmt = fmt or detect(path)
    if info is not None or fmt in families.NEW_FORMATS:
        cfg, state, sparsity = families.read(fmt, path, info)
        _check_architecture(path, cfg, architecture)
        return cfg, state, sparsity, path
    if path.is_file() and fmt in ("saelens", "sparsify") or (path.is_file() and path.name == dictionary_learning.AE):
        path = path.parent
    if fmt == "openai":
        file = path if path.is_file() else _single_pt(path)
        raw = pt_index(file)
        if openai.is_openai_state(raw):
            cfg, state, sparsity = openai.read(file, raw)
        elif "encoder.weight" in raw or "W_enc" in raw:
            cfg, state, sparsity = dictionary_learning.read(file, architecture, raw)
        else:
            raise CheckpointError(f"{file}: unknown .pt state dict (keys: {', '.join(list(map(str, raw))[:8])})")
        path = file
    else:
        reader = {"saelens": saelens.read, "sparsify": sparsify.read, "gemma_scope": gemma_scope.read,
                  "attn_z": attn_z.read}.get(fmt)
        if fmt == "dictionary_learning":
            cfg, state, sparsity = dictionary_learning.read(path, architecture)
        else:
            cfg, state, sparsity = reader(path)
    _check_architecture(path, cfg, architecture)
    return cfg, state, sparsity, path


def _check_architecture(path: Path, cfg, architecture: str | None) -> None:
    same_math = {cfg.architecture, architecture} == {"batchtopk", "jumprelu"}  # identical at inference
    if architecture is not None and cfg.architecture != architecture and not same_math:
        raise CheckpointError(f"{path}: the checkpoint says architecture {cfg.architecture!r}, but "
                              f"architecture={architecture!r} was given")


def _single_pt(path: Path) -> Path:
    pts = sorted(path.glob("*.pt"))
    if len(pts) != 1:
        raise CheckpointError(f"{path}: expected one .pt file, found {len(pts)}")
    return pts[0]


def load_sae(path, device=None, dtype=None, fmt: str | None = None, architecture: str | None = None,
             info: dict | None = None):
    """Load an SAE from any supported format; sets ``sae.path`` and ``sae.log_sparsity``."""
    from ..model import SAE

    cfg, state, sparsity, resolved = read(path, fmt, architecture, info)
    if dtype is None and cfg.dtype in ("float16", "bfloat16") and torch.device(device or "cpu").type == "cpu":
        dtype = torch.float32  # half-precision matmuls on the CPU are slow (fp16: ~100x) and lossy; compute in fp32
        log.debug("%s: stored as %s, loaded as float32 on the CPU", resolved, cfg.dtype)
    sae = SAE.from_state_dict(cfg, state, device=device, dtype=dtype, source=str(resolved))
    sae.path = resolved if resolved.is_dir() else resolved.parent
    if sparsity is not None:
        sae.log_sparsity = sparsity.to(device or "cpu")
    log.debug("loaded %r from %s", sae, resolved)
    return sae
