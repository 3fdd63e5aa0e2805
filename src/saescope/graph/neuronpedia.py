"""Neuronpedia's attribution-graph JSON, as circuit-tracer 0.5.0 writes it (``create_graph_files``), and back.

    {"metadata": {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold", "schema_version"},
     "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
     "nodes": [{"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
                "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}],
     "links": [{"source": node_id, "target": node_id, "weight"}]}

Node ids: feature ``"{layer}_{index}_{pos}"`` (feature = Cantor pairing of layer and index, feature_type
"cross layer transcoder" as circuit-tracer writes for every transcoder), error ``"0_{layer}_{pos}"`` (feature -1,
"mlp reconstruction error"), token ``"E_{token id}_{pos}"`` (feature = pos, layer "E", "embedding"), logit
``"{n_layers + 1}_{token id}_{last pos}"`` ("logit"; the first logit is the target). ``scan`` is the model name
and ``transcoder_list`` the transcoders; ``influence`` is each node's cumulative influence share; ``clerp`` holds
feature labels (the feature store's explanation, else labels.json) when known.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .._io import atomic_write_json
from ..errors import CheckpointError


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _node(node_id, feature, layer, pos, kind, js, clerp="", influence=None, activation=None, token_prob=0.0,
          target=False) -> dict:
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos, "feature_type": kind,
            "token_prob": token_prob, "is_target_logit": target, "run_idx": 0, "reverse_ctx_idx": 0,
            "jsNodeId": js, "clerp": clerp, "influence": influence, "activation": activation}


def node_ids(graph) -> list[str]:
    """The Neuronpedia node id of every node of ``graph``, in adjacency order."""
    out = [f"{L}_{f}_{p}" for L, p, f in graph.features.tolist()]
    out += [f"0_{L}_{p}" for L in range(graph.n_layers) for p in range(graph.n_pos)]
    out += [f"E_{int(t)}_{p}" for p, t in enumerate(graph.tokens.tolist())]
    out += [f"{graph.n_layers + 1}_{int(t)}_{graph.n_pos - 1}" for t in graph.logit_ids.tolist()]
    return out


def to_json(graph, slug: str = "graph", node_threshold: float = 0.8, edge_threshold: float = 0.98,
            labels: dict | None = None) -> dict:
    """The pruned graph as Neuronpedia's JSON object. ``labels``: {(layer, feature index): text}."""
    labels = labels or {}
    pr = graph.prune(node_threshold, edge_threshold)
    n_f, n_pos, L = graph.n_features, graph.n_pos, graph.n_layers
    ids = node_ids(graph)
    nodes = {}
    for i in pr.node_mask.nonzero().reshape(-1).tolist():
        inf = float(pr.cumulative[i])
        if i < n_f:
            layer, pos, f = graph.features[i].tolist()
            nodes[i] = _node(ids[i], _cantor(layer, f), str(layer), pos, "cross layer transcoder", f"{layer}_{f}-0",
                             labels.get((layer, f), ""), inf, float(graph.activations[i]))
        elif i < n_f + L * n_pos:
            layer, pos = divmod(i - n_f, n_pos)
            nodes[i] = _node(ids[i], -1, str(layer), pos, "mlp reconstruction error", f"{layer}_{pos}-0",
                             influence=inf)
        elif i < n_f + (L + 1) * n_pos:
            pos = i - n_f - L * n_pos
            nodes[i] = _node(ids[i], pos, "E", pos, "embedding", f"E_{int(graph.tokens[pos])}-{pos}", influence=inf)
        else:
            k = i - (graph.n_nodes - graph.n_logits)
            tok, p = int(graph.logit_ids[k]), float(graph.logit_probabilities[k])
            nodes[i] = _node(ids[i], tok, str(L + 1), n_pos - 1, "logit", f"L_{tok}-{n_pos - 1}",
                             f'Output "{graph.logit_strings[k]}" (p={p:.3f})', token_prob=p, target=k == 0)
    dsts, srcs = pr.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[dsts, srcs].tolist()
    links = [{"source": nodes[s]["node_id"], "target": nodes[d]["node_id"], "weight": w}
             for s, d, w in zip(srcs.tolist(), dsts.tolist(), weights) if s in nodes and d in nodes]
    used = {x for link in links for x in (link["source"], link["target"])}
    kept = [n for n in nodes.values() if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")]
    meta = {"slug": slug, "scan": graph.model or "saescope", "transcoder_list": list(graph.transcoders),
            "prompt_tokens": list(graph.token_strings), "prompt": graph.prompt, "node_threshold": node_threshold,
            "schema_version": 1}
    scores = {k: v for k, v in (graph.info or {}).items() if k in ("replacement_score", "completeness_score")}
    if scores:  # Neuronpedia's optional metadata.info; the graph view shows them
        meta["info"] = {"generator": {"name": "saescope"}, **scores}
    q = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": meta, "qParams": q, "nodes": kept, "links": links}


def write_json(graph, path, slug: str | None = None, node_threshold: float = 0.8, edge_threshold: float = 0.98,
               labels: dict | None = None) -> Path:
    path = Path(path)
    atomic_write_json(path, to_json(graph, slug or path.stem, node_threshold, edge_threshold, labels))
    return path


def _bad(path, what) -> CheckpointError:
    return CheckpointError(f"{path}: not a Neuronpedia attribution-graph JSON ({what})")


def read_json(path):
    """A Neuronpedia graph JSON -> ``Graph`` over its nodes (features, errors, tokens, logits) and links."""
    from .graph import Graph

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        meta, nodes, links = raw["metadata"], raw["nodes"], raw["links"]
        kinds = {k: [n for n in nodes if n["feature_type"] == k] for k in
                 ("cross layer transcoder", "mlp reconstruction error", "embedding", "logit")}
        feats = sorted((int(n["layer"]), int(n["ctx_idx"]), *_uncantor(int(n["layer"]), int(n["feature"])), n)
                       for n in kinds["cross layer transcoder"])
        prompt_tokens = list(meta["prompt_tokens"])
        n_pos = len(prompt_tokens)
        layers = {int(n["layer"]) for n in kinds["cross layer transcoder"] + kinds["mlp reconstruction error"]}
        logit_layer = {int(n["layer"]) for n in kinds["logit"]}
        n_layers = (min(logit_layer) - 1) if logit_layer else (max(layers) + 1 if layers else 0)
        tokens = torch.zeros(n_pos, dtype=torch.long)
        for n in kinds["embedding"]:
            tokens[int(n["ctx_idx"])] = int(n["node_id"].split("_")[1])
        logits = kinds["logit"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise _bad(path, f"{type(exc).__name__}: {exc}") from None
    g = Graph(str(meta.get("prompt", "")), tokens, prompt_tokens,
              torch.tensor([[f[0], f[1], f[2]] for f in feats], dtype=torch.long).reshape(-1, 3),
              torch.tensor([float(f[3].get("activation") or 0.0) for f in feats]), torch.zeros(0, 0),
              torch.tensor([int(n["feature"]) for n in logits], dtype=torch.long),
              torch.tensor([float(n.get("token_prob", 0.0)) for n in logits]),
              [_logit_string(n.get("clerp", "")) for n in logits], n_layers, str(meta.get("scan", "")),
              list(meta.get("transcoder_list") or []), {"from_json": True, "slug": meta.get("slug")})
    index = {nid: i for i, nid in enumerate(node_ids(g))}
    g.adjacency = torch.zeros(len(index), len(index))
    for link in links:
        s, t = index.get(link.get("source")), index.get(link.get("target"))
        if s is None or t is None:
            raise _bad(path, f"link {link.get('source')} -> {link.get('target')} names an unknown node")
        g.adjacency[t, s] = float(link["weight"])
    return g


def _uncantor(layer: int, z: int) -> tuple[int]:
    w = (math.isqrt(8 * z + 1) - 1) // 2
    y = z - w * (w + 1) // 2
    return (y,)


def _logit_string(clerp: str) -> str:
    if clerp.startswith('Output "') and '" (p=' in clerp:
        return clerp[len('Output "'):clerp.rindex('" (p=')]
    return clerp
