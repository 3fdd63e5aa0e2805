"""Kissane & Krzyzanowski's GPT-2 attention-output SAEs (``gpt2-small-hook-z-kk``):
``NAME.pt`` (a state dict with SAELens names) beside ``NAME_cfg.json`` (``act_size``, ``dict_size``, ``act_name``).

ReLU SAEs on ``hook_z`` with the heads concatenated (``[..., n_heads, d_head] -> [..., d_in]``), subtracting
``b_dec`` from the input.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError, ConfigError
from ..config import SAEConfig, SAEMetadata
from .common import cfg_int, cfg_str, pt_index, read_json


def cfg_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".pt")] + "_cfg.json")


def detect(path: Path) -> bool:
    return path.is_file() and path.suffix == ".pt" and cfg_path(path).is_file()


def read(path: Path) -> tuple[SAEConfig, dict, None]:
    path = Path(path)
    source = cfg_path(path)
    raw = read_json(source)
    d_in, d_sae = cfg_int(raw, "act_size", source), cfg_int(raw, "dict_size", source)
    hook = cfg_str(raw, "act_name", source)
    if isinstance(hook, str) and hook.startswith("blocks.") and hook.endswith(".hook_z") and ".attn." not in hook:
        hook = hook.replace(".hook_z", ".attn.hook_z")
    try:
        meta = SAEMetadata.from_dict({"hook_name": hook, "model_name": cfg_str(raw, "model_name", source),
                                      "extra": {"source_format": "attn_z"}})
        cfg = SAEConfig(architecture="relu", d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=True, metadata=meta)
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return cfg, pt_index(path), None
