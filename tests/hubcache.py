"""Build offline Hugging Face hub caches in the real on-disk layout, for tests of the online path.

    <cache>/models--ORG--NAME/blobs/<sha256>
    <cache>/models--ORG--NAME/snapshots/<commit>/<path>  -> ../../blobs/<sha256> (symlink)
    <cache>/models--ORG--NAME/refs/main                  holds <commit>

huggingface_hub resolves these with HF_HUB_OFFLINE=1 exactly as it would a downloaded repo.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def add_repo(cache: Path, repo_id: str, files: dict[str, bytes | Path], repo_type: str = "model") -> Path:
    """Write ``files`` (repo path -> content or source file) as one commit of ``repo_id``; return the snapshot dir."""
    folder = Path(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    contents = {p: (c.read_bytes() if isinstance(c, Path) else c) for p, c in files.items()}
    commit = hashlib.sha1(b"".join(p.encode() + hashlib.sha256(c).digest() for p, c in sorted(contents.items()))).hexdigest()
    snapshot = folder / "snapshots" / commit
    for path, data in contents.items():
        sha = hashlib.sha256(data).hexdigest()
        blob = folder / "blobs" / sha
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        target = snapshot / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        os.symlink(os.path.relpath(blob, target.parent), target)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def add_model_dir(cache: Path, repo_id: str, model_dir: Path) -> Path:
    """Publish every file of a saved HF model directory as ``repo_id``."""
    model_dir = Path(model_dir)
    files = {str(p.relative_to(model_dir)): p for p in sorted(model_dir.rglob("*")) if p.is_file()}
    return add_repo(cache, repo_id, files)
