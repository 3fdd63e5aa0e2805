"""Interventions from a graph: turn off or clamp transcoder features and compare predictions and generations.

API (the server's ``POST /api/graph/<name>/intervene`` calls ``intervene_graph``):

    intervene(lm, transcoders, prompt, nodes, max_new_tokens=16, top_k=10, temperature=0.0, seed=0)
        -> InterventionResult
    intervene_graph(graph, nodes, lm=None, transcoders=None, **same options) -> InterventionResult
        (loads the graph's model and transcoders by the names it records when not given)

``nodes``: a list of node specs, each one of
  * ``(layer, position, feature, value)`` (``value`` None or 0 turns the feature off; ``position`` None = every
    position, generated ones included);
  * ``{"layer": L, "position": p, "feature": f, "value": v}`` (``"pos"``/``"ctx_idx"`` also accepted);
  * ``{"node_id": "L_F_P", "value": v}`` (a Neuronpedia feature node id, as in the graph JSON).

Each edit is ``steer``'s clamp with the error term kept, at the transcoder's output hook: ``y' = y + decode(f') -
decode(f)`` with ``f`` read at its input hook in the same pass (downstream features respond to upstream edits;
attention is not frozen). ``InterventionResult.to_dict()`` is JSON: ``{"prompt", "nodes", "baseline": {"top":
[{"token", "id", "prob"}], "generation"}, "intervened": {...}}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..interp.steer import Intervention, SteeringHook, check_generation_args
from ..site import attach, check_feature


@dataclass(frozen=True)
class NodeEdit:
    layer: int
    position: int | None
    feature: int
    value: float = 0.0


@dataclass
class Side:
    top: list[dict]
    generation: str
    generation_ids: list[int] = field(default_factory=list)


@dataclass
class InterventionResult:
    prompt: str
    nodes: list[NodeEdit]
    baseline: Side
    intervened: Side

    def to_dict(self) -> dict:
        side = lambda s: {"top": s.top, "generation": s.generation, "generation_ids": s.generation_ids}  # noqa: E731
        return {"prompt": self.prompt, "nodes": [vars(n) for n in self.nodes], "baseline": side(self.baseline),
                "intervened": side(self.intervened)}


def parse_nodes(nodes, n_layers: int) -> list[NodeEdit]:
    if not isinstance(nodes, (list, tuple)) or not nodes:
        raise InputError("give at least one node to intervene on")
    out = []
    for n in nodes:
        if isinstance(n, dict):
            if "node_id" in n:
                parts = str(n["node_id"]).split("_")
                if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts):
                    raise InputError(f"node id {n['node_id']!r} is not a feature node ('layer_feature_pos')")
                layer, feat, pos = (int(p) for p in parts)
            else:
                try:
                    layer, feat = n["layer"], n["feature"]
                except KeyError as exc:
                    raise InputError(f"node {n!r} lacks {exc.args[0]!r}") from None
                pos = n.get("position", n.get("pos", n.get("ctx_idx")))
            value = n.get("value")
        elif isinstance(n, (list, tuple)) and len(n) in (3, 4):
            layer, pos, feat = n[:3]
            value = n[3] if len(n) == 4 else None
        else:
            raise InputError(f"node {n!r}: expected (layer, position, feature, value) or a dict")
        try:
            layer, feat = int(layer), int(feat)
            pos = None if pos is None else int(pos)
            value = 0.0 if value is None else float(value)
        except (TypeError, ValueError):
            raise InputError(f"node {n!r}: layer, position and feature must be integers, value a number") from None
        if not 0 <= layer < n_layers:
            raise InputError(f"node {n!r}: layer {layer} is out of range (0..{n_layers - 1})")
        if pos is not None and pos < 0:
            raise InputError(f"node {n!r}: position must be >= 0")
        out.append(NodeEdit(layer, pos, feat, value))
    return out


def _top(lm, logits: torch.Tensor, k: int) -> list[dict]:
    p = torch.softmax(logits.float(), -1)
    v, i = p.topk(min(k, p.shape[-1]))
    return [{"token": lm.to_string(torch.tensor([int(t)])), "id": int(t), "prob": float(x)}
            for x, t in zip(v.tolist(), i.tolist())]


def intervene(lm, transcoders, prompt: str, nodes, max_new_tokens: int = 16, top_k: int = 10,
              temperature: float = 0.0, seed: int | None = 0) -> InterventionResult:
    """See the module docstring."""
    check_generation_args(max_new_tokens, temperature, 1.0, seed)
    by_layer = {}
    for t in transcoders:
        att = attach(lm, t)
        by_layer[lm.hook_layer(att.hook_out)] = att
    edits = parse_nodes(nodes, lm.info.n_layers)
    ids = next(iter(by_layer.values())).tokens(prompt, reserve=max_new_tokens, truncate=False, what="prompt")
    hooks = {}
    for L in sorted({e.layer for e in edits}):
        if L not in by_layer:
            raise InputError(f"no transcoder for layer {L}")
        att = by_layer[L]
        ivs = []
        for e in (e for e in edits if e.layer == L):
            check_feature(att.sae, e.feature)
            if e.position is not None and e.position >= ids.shape[1]:
                raise InputError(f"position {e.position} is past the prompt ({ids.shape[1]} tokens)")
            ivs.append(Intervention((e.feature,), "clamp", e.value, "all" if e.position is None else f"at:{e.position}"))
        for hook, fn in SteeringHook(att, ivs).edits().items():
            if hook in hooks:
                raise InputError(f"two transcoders share the hook {hook}")
            hooks[hook] = fn
    kw = dict(max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature or 1.0, seed=seed,
              prepend_bos=False)
    n = ids.shape[1]
    sides = []
    for active in (False, True):
        ctx = lm.intervene(hooks) if active else _null()
        with ctx:
            logits = lm(ids)[0, -1]
            gen = lm.generate(ids, **kw)[0, n:].tolist()
        sides.append(Side(_top(lm, logits, top_k), lm.to_string(torch.tensor(gen, dtype=torch.long)), gen))
    return InterventionResult(prompt, edits, *sides)


def intervene_graph(graph, nodes, lm=None, transcoders=None, **options) -> InterventionResult:
    """``intervene`` on a graph's prompt, with its model and transcoders (loaded by name unless given)."""
    if lm is None:
        from ..lm import LanguageModel

        if not graph.model:
            raise InputError("the graph does not record its model; pass lm=")
        lm = LanguageModel.from_pretrained(graph.model, dtype=torch.float32)
    if transcoders is None:
        from .trace import load_transcoders

        if not graph.transcoders:
            raise InputError("the graph does not record its transcoders; pass transcoders=")
        transcoders = load_transcoders(lm, ",".join(graph.transcoders))
    return intervene(lm, transcoders, graph.prompt, nodes, **options)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
