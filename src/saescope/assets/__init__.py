"""The embedded default: a tiny GPT-2-architecture model, its tokenizer and SAEs (see MODEL_CARD.md)."""
from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
TINY = ASSETS / "tiny"
TINY_MODEL_NAME = "tiny"
TINY_DEFAULT_SAE = "resid2-topk"


def tiny_model_dir() -> Path:
    """Directory of the bundled model (HF layout: config.json, model.safetensors, tokenizer files)."""
    return TINY / "model"


def tiny_sae_dir(sae_id: str = TINY_DEFAULT_SAE) -> Path:
    """Directory of a bundled SAE in the native format (cfg.json, sae_weights.safetensors, ...)."""
    return TINY / "saes" / sae_id
