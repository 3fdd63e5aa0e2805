"""EleutherAI ``sparsify`` folders: ``cfg.json`` + ``sae.safetensors``.

Tensors: ``encoder.weight [d_sae, d_in]``, ``encoder.bias [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``.
Their math:  ``f = topk(relu(encoder(x - b_dec)))``,  ``x_hat = f @ W_dec + b_dec``, which is saescope's topk
with ``apply_b_dec_to_input``. A folder named ``layers.N`` holds an SAE on the output of block N
(``blocks.N.hook_resid_post``). Transcoders and skip connections are refused.
"""
from __future__ import annotations

import re
from pathlib import Path

from ...errors import CheckpointError
from ..config import SAEConfig, SAEMetadata
from .common import load_safetensors, read_json

CFG = "cfg.json"
WEIGHTS = "sae.safetensors"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG).is_file() and (path / WEIGHTS).is_file()


def read(path: Path) -> tuple[SAEConfig, dict, None]:
    path = Path(path)
    raw = read_json(path / CFG)
    source = path / CFG
    if raw.get("transcode"):
        raise CheckpointError(f"{source}: sparsify transcoders are not supported (transcode=true)")
    if raw.get("skip_connection"):
        raise CheckpointError(f"{source}: sparsify skip connections are not supported (skip_connection=true)")
    if raw.get("activation", "topk") != "topk":
        raise CheckpointError(f"{source}: unsupported activation {raw.get('activation')!r} (saescope reads topk)")
    try:
        d_in = int(raw["d_in"])
        d_sae = int(raw.get("num_latents") or d_in * int(raw["expansion_factor"]))
        k = int(raw["k"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: missing or invalid field {exc}") from None
    state = load_safetensors(path / WEIGHTS)
    if "W_skip" in state:
        raise CheckpointError(f"{path / WEIGHTS}: sparsify skip connections (W_skip) are not supported")
    for key in ("encoder.weight", "encoder.bias", "W_dec", "b_dec"):
        if key not in state:
            raise CheckpointError(f"{path / WEIGHTS}: missing tensor {key!r}")
    meta = {"extra": {"source_format": "sparsify"}}
    m = re.fullmatch(r"layers\.(\d+)", path.name)
    if m:
        meta["hook_name"] = f"blocks.{m.group(1)}.hook_resid_post"
    parent_cfg = path.parent / "config.json"
    if parent_cfg.is_file():
        run = read_json(parent_cfg)
        if isinstance(run.get("model"), str):
            meta["model_name"] = run["model"]
    cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, apply_b_dec_to_input=True,
                    metadata=SAEMetadata.from_dict(meta))
    out = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"], "W_dec": state["W_dec"], "b_dec": state["b_dec"]}
    return cfg, out, None
