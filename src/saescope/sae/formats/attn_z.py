"""Kissane & Krzyzanowski's GPT-2 attention-output SAEs (``gpt2-small-hook-z-kk``):
``NAME.pt`` (a state dict with SAELens names) beside ``NAME_cfg.json`` (``act_size``, ``dict_size``, ``act_name``).

ReLU SAEs on ``hook_z`` with the heads concatenated (``[..., n_heads, d_head] -> [..., d_in]``), subtracting
``b_dec`` from the input.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError
from ..config import SAEConfig, SAEMetadata
from .common import load_pt, read_json


def cfg_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".pt")] + "_cfg.json")


def detect(path: Path) -> bool:
    return path.is_file() and path.suffix == ".pt" and cfg_path(path).is_file()


def read(path: Path) -> tuple[SAEConfig, dict, None]:
    path = Path(path)
    raw = read_json(cfg_path(path))
    try:
        d_in, d_sae = int(raw["act_size"]), int(raw["dict_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{cfg_path(path)}: missing or invalid field {exc}") from None
    hook = raw.get("act_name")
    if isinstance(hook, str) and hook.startswith("blocks.") and hook.endswith(".hook_z") and ".attn." not in hook:
        hook = hook.replace(".hook_z", ".attn.hook_z")
    meta = SAEMetadata.from_dict({"hook_name": hook, "model_name": raw.get("model_name"),
                                  "extra": {"source_format": "attn_z"}})
    cfg = SAEConfig(architecture="relu", d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=True, metadata=meta)
    return cfg, load_pt(path), None
