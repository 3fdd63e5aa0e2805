"""Influence, pruning and the graph scores of the circuit-tracing method (definitions as in circuit-tracer 0.5.0).

With ``A`` the adjacency (rows targets, columns sources) and ``N = |A|`` row-normalised (each row's absolute
weights sum to 1), the influence of every node on the logits is ``w (N + N^2 + N^3 + ...)`` with ``w`` the logit
probabilities on the logit rows (a series that ends: the graph is acyclic).

* ``prune``: keep the nodes holding ``node_threshold`` of the total influence (tokens and logits always), then the
  edges holding ``edge_threshold`` of the edge influence ``N[t, s] * (influence[t] + w[t])`` in the kept graph;
  drop feature/error nodes left without outgoing edges and features without incoming ones, until stable.
* ``scores``: the replacement score (of the influence reaching the logits from tokens and errors, the token
  share) and the completeness score (the influence-weighted share of every node's inputs that come from non-error
  nodes).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import InputError


class Pruned(NamedTuple):
    node_mask: torch.Tensor         # [n] bool
    edge_mask: torch.Tensor         # [n, n] bool (rows targets, columns sources)
    cumulative: torch.Tensor        # [n] cumulative influence share of each node (sorted by influence)
    influence: torch.Tensor         # [n] influence on the logits


def normalized(adjacency: torch.Tensor) -> torch.Tensor:
    a = adjacency.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def influence(norm: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """``weights @ (N + N^2 + ...)`` for a nilpotent ``N`` (an acyclic graph)."""
    cur = weights @ norm
    total = cur.clone()
    for _ in range(max_iter):
        if not cur.any():
            return total
        cur = cur @ norm
        total += cur
    raise RuntimeError("influence did not converge: the graph has a cycle")


def _threshold(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """The smallest score among the top scores that together hold ``keep`` of the total."""
    s = scores.sort(descending=True).values
    cum = s.cumsum(0) / s.sum()
    i = min(int(torch.searchsorted(cum, torch.tensor(keep, dtype=cum.dtype))), len(s) - 1)
    return s[i]


def logit_weights(n: int, probabilities: torch.Tensor) -> torch.Tensor:
    w = torch.zeros(n)
    w[n - len(probabilities):] = probabilities.float()
    return w


def prune(adjacency: torch.Tensor, probabilities: torch.Tensor, n_features: int, n_tokens: int,
          node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """See the module docstring. ``adjacency [n, n]`` ordered features, errors, tokens, logits."""
    for name, v in (("node threshold", node_threshold), ("edge threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise InputError(f"{name} must be between 0 and 1, got {v}")
    n, n_logits = adjacency.shape[0], len(probabilities)
    w = logit_weights(n, probabilities)
    node_inf = influence(normalized(adjacency), w)
    keep = node_inf >= _threshold(node_inf, node_threshold)
    keep[n - n_logits - n_tokens:] = True
    kept = adjacency.clone()
    kept[~keep] = 0
    kept[:, ~keep] = 0
    norm = normalized(kept)
    edge_scores = norm * (influence(norm, w) + w)[:, None]
    edges = edge_scores >= _threshold(edge_scores.flatten(), edge_threshold)
    inner = n - n_logits - n_tokens              # features and errors
    old = None
    while old is None or not torch.equal(old, keep):
        old = keep.clone()
        edges[~keep] = False
        edges[:, ~keep] = False
        keep[:inner] &= edges[:, :inner].any(0)
        keep[:n_features] &= edges[:n_features].any(1)
    order = node_inf.sort(descending=True)
    cumulative = torch.zeros_like(node_inf)
    cumulative[order.indices] = order.values.cumsum(0) / order.values.sum()
    return Pruned(keep, edges, cumulative, node_inf)


def scores(adjacency: torch.Tensor, probabilities: torch.Tensor, n_features: int, n_tokens: int,
           n_layers: int) -> tuple[float, float]:
    """(replacement score, completeness score), see the module docstring."""
    n = adjacency.shape[0]
    w = logit_weights(n, probabilities)
    norm = normalized(adjacency)
    inf = influence(norm, w)
    err = slice(n_features, n_features + n_tokens * n_layers)
    tok = slice(err.stop, err.stop + n_tokens)
    token_inf, error_inf = inf[tok].sum(), inf[err].sum()
    replacement = float(token_inf / (token_inf + error_inf))
    non_error = 1 - norm[:, err].sum(-1)
    out_inf = inf + w
    completeness = float((non_error * out_inf).sum() / out_inf.sum())
    return replacement, completeness
