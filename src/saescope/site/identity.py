"""Which SAE and model a derived artefact (feature store, explanations, attribution graph) was built from.

``describe(lm, sae)`` is what an artefact records; ``check_artifact(recorded, lm, sae, what)`` refuses an artefact
built for another SAE (another hook, width or weights) or model, naming what differs. ``fingerprint(sae)`` is a
SHA-256 of the SAE's tensors (names, shapes and float32 values), so the same SAE stored in float16 and loaded in
float32 has the same fingerprint, and any change to its weights changes it.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from ..assets import TINY
from ..errors import ConfigError
from .fit import same_model

log = logging.getLogger(__name__)

_CHUNK = 1 << 22   # elements hashed at a time (16 MiB of float32): no full float32 copy of a half-precision SAE


@torch.no_grad()
def fingerprint(sae) -> str:
    """First 16 hex digits of a SHA-256 over the SAE's parameters in name order (float32 little-endian bytes)."""
    h = hashlib.sha256()
    for name, p in sorted(sae.named_parameters()):
        h.update(f"{name}:{tuple(p.shape)};".encode())
        flat = p.detach().reshape(-1)
        for s in range(0, flat.numel(), _CHUNK):
            h.update(flat[s:s + _CHUNK].to(device="cpu", dtype=torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def _path_name(sae) -> str | None:
    """The SAE's directory as the user would name it: ``tiny:<id>`` for a bundled SAE (never this machine's path)."""
    if not getattr(sae, "path", None):
        return None
    try:
        return f"tiny:{Path(sae.path).resolve().relative_to(TINY / 'saes').as_posix()}"
    except ValueError:
        return str(sae.path)


def sae_name(sae) -> str:
    """``release:sae_id`` when the SAE came from the registry, else its directory, else a description."""
    meta = sae.cfg.metadata
    if meta.release and meta.sae_id:
        return f"{meta.release}:{meta.sae_id}"
    return _path_name(sae) or f"{sae.cfg.architecture}-{sae.cfg.d_sae}"


def describe(lm, sae) -> dict:
    """What an artefact records about its SAE and model."""
    meta = sae.cfg.metadata
    return {"model": getattr(lm, "name", None), "model_source": getattr(lm, "source", None), "hook": meta.hook_name, "hook_out": meta.hook_name_out,
            "d_sae": sae.d_sae, "d_in": sae.d_in, "d_out": sae.d_out, "architecture": sae.cfg.architecture,
            "sae": sae_name(sae), "sae_path": _path_name(sae),
            "release": meta.release, "sae_id": meta.sae_id, "neuronpedia_id": meta.neuronpedia_id,
            "sae_fingerprint": fingerprint(sae)}


def check_artifact(recorded: dict, lm, sae, what: str, allow_mismatch: bool = False) -> None:
    """Raise a one-line ConfigError when ``recorded`` (an artefact's ``describe`` record) is not for ``sae`` on
    ``lm``. ``allow_mismatch`` turns the error into a loud warning (an explicit override). An artefact that does
    not record the SAE's fingerprint can only be checked by hook and width: a warning says so."""
    problems = []
    meta = sae.cfg.metadata
    if recorded.get("hook") and meta.hook_name and recorded["hook"] != meta.hook_name:
        problems.append(f"hook {recorded['hook']} (this SAE: {meta.hook_name})")
    if recorded.get("d_sae") is not None and int(recorded["d_sae"]) != sae.d_sae:
        problems.append(f"d_sae {recorded['d_sae']} (this SAE: {sae.d_sae})")
    if recorded.get("model") and lm is not None and not same_model(recorded["model"], lm.name):
        problems.append(f"model {recorded['model']} (now: {lm.name})")
    fp = recorded.get("sae_fingerprint")
    if fp is not None and not problems and fp != fingerprint(sae):
        problems.append(f"SAE weights {fp} (this SAE: {fingerprint(sae)})")
    if problems:
        msg = (f"{what} was built for another SAE: {'; '.join(problems)}; rebuild it for this SAE"
               + ("" if allow_mismatch else " or pass --allow-mismatch to use it anyway"))
        if not allow_mismatch:
            raise ConfigError(msg)
        log.warning("%s (used anyway, as asked)", msg)
    elif fp is None:
        log.warning("%s does not record which SAE weights it was built from; only its hook and width were checked",
                    what)
