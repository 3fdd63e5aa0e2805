"""Pretrained SAE releases (``registry.json`` beside this file) and SAE specs (``PATH`` or ``RELEASE:SAE_ID``).

A release names a Hugging Face repo, its format, the model and, per SAE, the file path inside the repo, the
TransformerLens hook name and the Neuronpedia id. Files come through ``huggingface_hub.hf_hub_download``, so
they are cached and work offline (``HF_HUB_OFFLINE=1``) once cached. The ``tiny`` release is local: the SAEs
bundled in ``saescope/assets/tiny/saes/``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import CheckpointError, InputError

log = logging.getLogger(__name__)

REGISTRY = Path(__file__).with_name("registry.json")


@dataclass(frozen=True)
class SAEEntry:
    id: str
    path: str
    hook_name: str | None = None
    neuronpedia_id: str | None = None
    l0: float | None = None


@dataclass(frozen=True)
class Release:
    name: str
    description: str
    format: str
    model: str
    repo_id: str | None = None
    input_transform: str | None = None   # None: as the checkpoint's config says
    prepend_bos: bool = True
    local: bool = False
    note: str | None = None
    input_shift: str | None = None       # "attn_value_bias": trained on TL hook_z (see note; SAE.fold_input_shift)
    links: dict = dataclasses.field(default_factory=dict)
    saes: tuple[SAEEntry, ...] = ()

    def sae(self, sae_id: str) -> SAEEntry:
        for entry in self.saes:
            if entry.id == sae_id:
                return entry
        ids = [e.id for e in self.saes]
        shown = ", ".join(ids[:6]) + (", ..." if len(ids) > 6 else "")
        raise CheckpointError(f"release {self.name!r} has no SAE {sae_id!r} (available: {shown or 'none'}; "
                              f"see `saescope list --release {self.name}`)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["saes"] = [dataclasses.asdict(s) for s in self.saes]
        return d


def _tiny_entries() -> tuple[SAEEntry, ...]:
    from ..assets import TINY

    root = TINY / "saes"
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / "cfg.json").is_file():
                hook = None
                try:
                    raw = json.loads((d / "cfg.json").read_text())
                    hook = (raw.get("metadata") or {}).get("hook_name")
                except (OSError, ValueError):
                    pass
                out.append(SAEEntry(id=d.name, path=str(d), hook_name=hook))
    return tuple(out)


@lru_cache(maxsize=1)
def _load_registry() -> dict:
    return json.loads(REGISTRY.read_text(encoding="utf-8"))["releases"]


def releases() -> list[Release]:
    """Every registered release, in registry order."""
    return [get_release(name) for name in _load_registry()]


def get_release(name: str) -> Release:
    raw = _load_registry().get(name)
    if raw is None:
        known = ", ".join(_load_registry())
        raise CheckpointError(f"unknown SAE release {name!r} (known: {known}; see `saescope list`)")
    raw = dict(raw)
    saes = tuple(SAEEntry(**s) for s in raw.pop("saes", []))
    if raw.get("local") and name == "tiny":
        saes = _tiny_entries()
    return Release(name=name, saes=saes, **raw)


def _download(repo_id: str, filename: str, required: bool = True) -> Path | None:
    """A repo file from the HF cache, else from the hub. The cache is tried first with ``local_files_only`` so a
    cached release loads without touching the network (no retries against an unreachable hub)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, local_files_only=True))
    except (LocalEntryNotFoundError, EntryNotFoundError, FileNotFoundError, ValueError):
        pass
    offline_msg = (f"{repo_id}/{filename}: not in the local Hugging Face cache and the hub is unreachable"
                   f"{' (HF_HUB_OFFLINE=1)' if constants.HF_HUB_OFFLINE else ''}; connect once to download it")
    if constants.HF_HUB_OFFLINE:
        if not required:
            return None
        raise CheckpointError(offline_msg)
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: the hub could not be reached
        if not required:
            return None
        raise CheckpointError(offline_msg) from None
    except EntryNotFoundError:
        if not required:
            return None
        raise CheckpointError(f"{repo_id}/{filename}: not found in the repository") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id}: repository not found on the Hugging Face hub (or it is gated/private)") from None
    except OSError as exc:
        raise CheckpointError(f"{repo_id}/{filename}: download failed ({exc})") from None


def fetch(release: Release, entry: SAEEntry) -> Path:
    """Local path of an SAE's files (downloading into the HF cache if needed)."""
    if release.local:
        path = Path(entry.path)
        if not path.exists():
            raise CheckpointError(f"{path}: bundled SAE missing; reinstall saescope")
        return path
    repo, p = release.repo_id, entry.path.rstrip("/")
    if release.format == "saelens":
        _download(repo, f"{p}/sae_weights.safetensors")
        _download(repo, f"{p}/sparsity.safetensors", required=False)
        return _download(repo, f"{p}/cfg.json").parent
    if release.format == "gemma_scope":
        return _download(repo, f"{p}/params.npz").parent
    if release.format == "sparsify":
        _download(repo, f"{p}/sae.safetensors")
        return _download(repo, f"{p}/cfg.json").parent
    if release.format == "dictionary_learning":
        _download(repo, f"{p}/config.json", required=False)
        return _download(repo, f"{p}/ae.pt").parent
    if release.format == "attn_z":
        _download(repo, p[: -len(".pt")] + "_cfg.json")
        return _download(repo, p)
    if release.format == "openai":
        return _download(repo, p)
    raise CheckpointError(f"registry: release {release.name!r} has unknown format {release.format!r}")


def load_pretrained(release: str, sae_id: str, device=None, dtype=None):
    """``SAE`` for ``release``/``sae_id`` with the registry's metadata and input transform applied."""
    from .formats import load_sae

    rel = get_release(release)
    if rel.local and not rel.saes:
        raise CheckpointError(f"release {release!r}: no SAEs bundled yet in saescope/assets/tiny/saes/ "
                              f"(they are trained by scripts/; pass a local SAE path instead)")
    entry = rel.sae(sae_id)
    path = fetch(rel, entry)
    sae = load_sae(path, device=device, dtype=dtype, fmt=rel.format)
    meta = {"release": release, "sae_id": sae_id, "prepend_bos": rel.prepend_bos}
    if not rel.local or not sae.cfg.metadata.model_name:
        meta["model_name"] = rel.model
    if entry.hook_name:
        meta["hook_name"] = entry.hook_name
    if entry.neuronpedia_id:
        meta["neuronpedia_id"] = entry.neuronpedia_id
    if rel.input_shift:
        meta["extra"] = {**sae.cfg.metadata.extra, "input_shift": rel.input_shift}
        log.warning("%s:%s: %s", release, sae_id, rel.note or f"needs input shift {rel.input_shift}")
    changes: dict = {"metadata": meta}
    if rel.input_transform and rel.input_transform != sae.cfg.input_transform:
        if sae.cfg.input_transform not in ("none", rel.input_transform):
            log.warning("%s:%s: checkpoint says input transform %s, registry says %s; using the registry's",
                        release, sae_id, sae.cfg.input_transform, rel.input_transform)
        changes["input_transform"] = rel.input_transform
    sae.cfg = sae.cfg.replace(**changes)
    return sae


def load_spec(spec: str, device=None, dtype=None):
    """An SAE from a spec: an existing local path, or ``RELEASE:SAE_ID``."""
    from .formats import load_sae

    if not isinstance(spec, str) or not spec.strip():
        raise InputError("SAE spec is empty: give a local path or RELEASE:SAE_ID (see `saescope list`)")
    path = Path(spec).expanduser()
    if path.exists():
        return load_sae(path, device=device, dtype=dtype)
    release, sep, sae_id = spec.partition(":")
    if not sep or not sae_id:
        raise InputError(f"SAE spec {spec!r}: no such file, and not of the form RELEASE:SAE_ID "
                         f"(e.g. gpt2-small-res-jb:blocks.6.hook_resid_pre)")
    if release not in _load_registry():
        raise CheckpointError(f"SAE spec {spec!r}: unknown release {release!r} and no such file (see `saescope list`)")
    return load_pretrained(release, sae_id, device=device, dtype=dtype)
