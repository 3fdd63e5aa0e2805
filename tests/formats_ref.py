"""Shared by tests/test_formats_*.py: synthetic SAEs written in a release family's published layout into an
offline hub cache in the real layout (hubcache.add_repo), loaded by saescope and, as the reference, by
SAELens's own ``SAE.from_pretrained`` on the same cache (HF_HUB_OFFLINE=1, see conftest.py).

Two things are adjusted on the SAELens side, both outside its math:
* ``get_safetensors_tensor_shapes`` reads a safetensors header with HTTP range requests (never cached); here
  it reads the same header from the cached file.
* families whose SAELens loader hard-codes the real sizes (d_in 4096, d_sae 65536, ...) get small sizes
  through SAELens's own per-release ``config_overrides`` mechanism.
"""
from __future__ import annotations

import io
import json
import struct

import numpy as np
import torch

from hubcache import add_repo  # noqa: F401  (re-exported for the family tests)


def st_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def pt_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in arrays.items()})
    return buf.getvalue()


def json_bytes(obj) -> bytes:
    return json.dumps(obj).encode()


def randn(gen: torch.Generator, *shape, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale + shift


def _local_shapes(repo_id: str, filename: str) -> dict:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(repo_id, filename, local_files_only=True)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def saelens_ref(release: str, sae_id: str, monkeypatch, overrides: dict | None = None):
    """SAELens's ``SAE.from_pretrained(release, sae_id)`` (float32, CPU) on the offline cache."""
    import sae_lens as sl
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", _local_shapes)
    if overrides:
        lookup = get_pretrained_saes_directory()[release]
        monkeypatch.setattr(lookup, "config_overrides", {**(lookup.config_overrides or {}), **overrides})
    return sl.SAE.from_pretrained(release, sae_id, device="cpu", dtype="float32").eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def compare(ours, ref, x: torch.Tensor, tol: float = 1e-5) -> float:
    """Features and outputs (for a transcoder: the prediction of its output hook, skip path included) of
    ``ours`` and SAELens's ``ref`` on ``x``; returns the largest relative error after asserting it < ``tol``."""
    with torch.no_grad():
        f, f_ref = ours.encode(x), ref.encode(x)
        active = float((f_ref > 0).float().mean())
        assert 0.01 < active < 0.99, f"degenerate test data: {active:.3f} of the features are active"
        errs = {"features": rel_err(f, f_ref), "output": rel_err(ours(x), ref(x))}
        if ours.cfg.input_transform == "none" and not ours.cfg.skip:  # decode alone is comparable
            d_ref = ref.decode(f_ref)   # SAELens gives hook_z back per head; saescope's stateless decode is flat
            errs["decode"] = rel_err(ours.decode(f_ref).reshape(d_ref.shape), d_ref)
    assert max(errs.values()) < tol, errs
    return max(errs.values())


def report(family: str, err: float, peer: str = "SAELens 6.54.12") -> None:
    print(f"\n[vs {peer}] {family}: max relative error {err:.2e}")
