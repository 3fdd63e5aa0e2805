"""``Graph``: an attribution graph with what made it, and saescope's compact file format.

Compact format (``.safetensors``): tensors ``adjacency [n, n]`` float32 (rows targets, columns sources; nodes
ordered features, errors (layer-major), tokens, logits), ``features [n_f, 3]`` int64 (layer, position, index),
``activations [n_f]``, ``tokens [pos]``, ``logit_ids [k]``, ``logit_probabilities [k]``; the safetensors metadata
``saescope_graph`` holds a JSON header: format version, prompt, token strings, logit token strings, model,
transcoders, n_layers, scores. No pickle.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._io import atomic_write_path
from ..errors import CheckpointError, InputError
from . import prune as _prune

FORMAT = "saescope-graph"
VERSION = 1
_TENSORS = ("adjacency", "features", "activations", "tokens", "logit_ids", "logit_probabilities")


@dataclass
class Graph:
    prompt: str
    tokens: torch.Tensor                 # [pos] token ids
    token_strings: list[str]
    features: torch.Tensor               # [n_f, 3] (layer, position, feature index)
    activations: torch.Tensor            # [n_f]
    adjacency: torch.Tensor              # [n, n]
    logit_ids: torch.Tensor              # [k]
    logit_probabilities: torch.Tensor    # [k]
    logit_strings: list[str]
    n_layers: int
    model: str = ""
    transcoders: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)     # scores, timings, exactness

    # ------------------------------------------------------------------ node layout
    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_ids.shape[0])

    @property
    def n_nodes(self) -> int:
        return int(self.adjacency.shape[0])

    def error_index(self, layer: int, pos: int) -> int:
        return self.n_features + layer * self.n_pos + pos

    def token_index(self, pos: int) -> int:
        return self.n_features + self.n_layers * self.n_pos + pos

    def logit_index(self, i: int) -> int:
        return self.n_nodes - self.n_logits + i

    def feature_index(self, layer: int, pos: int, feature: int) -> int:
        """Row of an active feature, or an InputError naming it."""
        hit = ((self.features[:, 0] == layer) & (self.features[:, 1] == pos) & (self.features[:, 2] == feature))
        hit = hit.nonzero().reshape(-1)
        if not len(hit):
            raise InputError(f"feature {feature} of layer {layer} is not active at position {pos} in this graph")
        return int(hit[0])

    # ------------------------------------------------------------------ analysis
    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> _prune.Pruned:
        return _prune.prune(self.adjacency, self.logit_probabilities, self.n_features, self.n_pos,
                            node_threshold, edge_threshold)

    def scores(self) -> tuple[float, float]:
        """(replacement score, completeness score) of the unpruned graph."""
        return _prune.scores(self.adjacency, self.logit_probabilities, self.n_features, self.n_pos, self.n_layers)

    def __repr__(self) -> str:
        return (f"Graph({self.prompt!r}, model={self.model}, {self.n_features} features, {self.n_pos} positions, "
                f"{self.n_logits} logits)")

    # ------------------------------------------------------------------ compact files
    def save(self, path) -> Path:
        """Write the compact format (``.safetensors``) or Neuronpedia's JSON (``.json``, pruned with the
        default thresholds; use ``saescope.graph.neuronpedia.write_json`` to choose them)."""
        path = Path(path)
        if path.suffix == ".json":
            from .neuronpedia import write_json

            write_json(self, path)
            return path
        from safetensors.torch import save_file

        header = {"format": FORMAT, "version": VERSION, "prompt": self.prompt, "token_strings": self.token_strings,
                  "logit_strings": self.logit_strings, "n_layers": self.n_layers, "model": self.model,
                  "transcoders": self.transcoders, "info": self.info}
        tensors = {"adjacency": self.adjacency.float(), "features": self.features.long(),
                   "activations": self.activations.float(), "tokens": self.tokens.long(),
                   "logit_ids": self.logit_ids.long(), "logit_probabilities": self.logit_probabilities.float()}
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_path(path, lambda tmp: save_file(tensors, tmp, metadata={"saescope_graph": json.dumps(header)}))
        return path


def _bad(path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a saescope graph file ({what})")


def load_compact(path) -> Graph:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "saescope_graph" not in meta:
                raise _bad(path, "no saescope_graph header")
            header = json.loads(meta["saescope_graph"])
            missing = [k for k in _TENSORS if k not in f.keys()]
            if missing:
                raise _bad(path, f"missing tensors {missing}")
            t = {k: f.get_tensor(k) for k in _TENSORS}
    except (SafetensorError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _bad(path, "header format is not saescope-graph")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path}: graph format version {header.get('version')!r}; this saescope reads {VERSION}")
    n_layers = header.get("n_layers")
    n_f, n_pos, k = t["features"].shape[0], t["tokens"].shape[0], t["logit_ids"].shape[0]
    n = n_f + (n_layers + 1) * n_pos + k if isinstance(n_layers, int) and n_layers >= 0 else -1
    if tuple(t["adjacency"].shape) != (n, n) or t["features"].shape[1:] != (3,) or t["activations"].shape != (n_f,) \
            or t["logit_probabilities"].shape != (k,):
        raise _bad(path, f"tensor shapes disagree (adjacency {tuple(t['adjacency'].shape)}, expected ({n}, {n}))")
    strings = header.get("token_strings"), header.get("logit_strings")
    if not all(isinstance(s, list) for s in strings) or len(strings[0]) != n_pos or len(strings[1]) != k:
        raise _bad(path, "token_strings/logit_strings do not match the tensors")
    return Graph(str(header.get("prompt", "")), t["tokens"], strings[0], t["features"], t["activations"],
                 t["adjacency"], t["logit_ids"], t["logit_probabilities"], strings[1], n_layers,
                 str(header.get("model", "")), list(header.get("transcoders") or []), dict(header.get("info") or {}))


def load_graph(path) -> Graph:
    """A graph file: saescope's compact ``.safetensors``, or a Neuronpedia attribution-graph ``.json`` (circuit-tracer's
    output or saescope's; it holds the pruned graph only, so the result covers its nodes and links)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"graph file {path} does not exist")
    if path.suffix.lower() == ".json":
        from .neuronpedia import read_json

        return read_json(path)
    return load_compact(path)
