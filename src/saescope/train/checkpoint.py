"""Atomic training checkpoints: ``<out>/checkpoint/state.pt`` (torch.save of tensors and plain containers only).

Written to a temporary file in the same directory, fsynced, then ``os.replace``d: a crash or a full disk
leaves the previous checkpoint intact. Loaded with ``weights_only=True``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .._io import atomic_write_bytes, atomic_write_text
from ..errors import CheckpointError

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"


def _remove_torn_writes(path: Path) -> None:
    """Delete temp files of checkpoint writes cut short by a crash (never a checkpoint; one writer per run)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def save_state(out_dir: Path, state: dict) -> Path:
    path = Path(out_dir) / CHECKPOINT_DIR / STATE_FILE
    _remove_torn_writes(path)
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    return path


def load_state(out_dir: Path) -> dict | None:
    path = Path(out_dir) / CHECKPOINT_DIR / STATE_FILE
    _remove_torn_writes(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or hostile file
        raise CheckpointError(f"{path}: cannot read the training checkpoint ({type(exc).__name__}); "
                              f"delete it to restart the run") from None


def read_metrics(path: Path) -> list[dict]:
    rows = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a crash
    return rows


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only rows with step <= last_step (rows written after the checkpoint are replayed on resume)."""
    rows = [r for r in read_metrics(path) if int(r.get("step", -1)) <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
