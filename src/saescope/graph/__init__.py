"""Attribution graphs: trace a prediction through per-layer transcoder features (the circuit-tracing method).

    g = trace(lm, load_transcoders(lm), "The cat sat on the")   # lm loaded in float32
    g.save("cat.json")              # Neuronpedia attribution-graph JSON (pruned), or .safetensors (compact, full)
    g = load_graph("cat.json")
    intervene_graph(g, [(2, 5, 117, 0.0)])                      # turn a feature off: predictions side by side
"""
from __future__ import annotations

from .attribution import Attribution, attribute, constant_terms, salient_logits
from .graph import Graph, load_graph
from .intervene import InterventionResult, NodeEdit, intervene, intervene_graph
from .neuronpedia import to_json, write_json
from .replacement import ReplacementModel
from .trace import feature_labels, load_transcoders, trace

__all__ = ["Attribution", "Graph", "InterventionResult", "NodeEdit", "ReplacementModel", "attribute", "constant_terms",
           "feature_labels", "intervene", "intervene_graph", "load_graph", "load_transcoders", "salient_logits",
           "to_json", "trace", "write_json"]
