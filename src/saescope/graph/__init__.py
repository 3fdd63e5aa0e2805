"""Attribution graphs: trace a prediction through per-layer transcoder features (the circuit-tracing method)."""
from __future__ import annotations

from .attribution import Attribution, attribute, constant_terms, salient_logits
from .replacement import ReplacementModel

__all__ = ["Attribution", "ReplacementModel", "attribute", "constant_terms", "salient_logits"]
