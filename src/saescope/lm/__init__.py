"""The model layer: Hugging Face causal LMs read and written at TransformerLens-named hook points."""
from __future__ import annotations

from .hookpoints import FAMILIES, Family, HookPoint
from .model import HookContext, LanguageModel, ModelInfo, Tokens

__all__ = ["LanguageModel", "ModelInfo", "HookContext", "Tokens", "Family", "FAMILIES", "HookPoint"]
