"""What the feature browser shows besides a store's records: nearest features by decoder cosine, search by the
logit lens, the dense-feature mark, explanations in short, and display strings of stored examples.

    DecoderNeighbours(sae).nearest(i, k=10) -> [{"index", "cosine"}]    cosine of W_dec rows [d_sae, d_out]
    DecoderNeighbours(sae).all(k=10)        -> yields (i, [{"index", "cosine"}]) for every feature, chunked
    LensIndex({feature: [token, ...]}).search("God", limit) -> [(feature, rank, "logit lens", token)]
    is_dense(density, threshold=DENSE_DENSITY) -> bool
    explanation_summary(explanations) -> {"explanation", "model", "score", "scorer"} | None
    token_display(lm) -> display(ids) -> [str]        ``saescope.lm.tokens.display_tokens`` with ids range-checked
    redisplay(record, display) -> the record with its examples' tokens as ``display(ids)`` gives them
"""
from __future__ import annotations

import math
import re
from typing import Callable, Iterator

import torch

from ..errors import InputError, SaescopeError

DENSE_DENSITY = 0.01        # a feature active on more than this fraction of tokens is marked "dense"
_CHUNK = 1024


class DecoderNeighbours:
    """Nearest features by the cosine similarity of their decoder rows (``W_dec [d_sae, d_out]``)."""

    def __init__(self, sae):
        self.W = sae.W_dec.detach()
        self.norms = self.W.float().norm(dim=-1).clamp_min(1e-12)        # [d_sae]

    @property
    def d_sae(self) -> int:
        return self.W.shape[0]

    @torch.no_grad()
    def _cosines(self, rows: torch.Tensor) -> torch.Tensor:
        """rows LongTensor [n] -> cosines [n, d_sae] (a feature's cosine with itself set to -inf)."""
        w = self.W[rows].float()
        cos = (w @ self.W.float().T) / (self.norms[rows, None] * self.norms[None, :])
        cos[torch.arange(len(rows)), rows] = float("-inf")
        return cos

    def _top(self, cos: torch.Tensor, k: int) -> list[list[dict]]:
        k = min(k, self.d_sae - 1)
        if k <= 0:
            return [[] for _ in range(cos.shape[0])]
        vals, idx = cos.topk(k, dim=-1)
        return [[{"index": int(i), "cosine": round(float(v), 4)} for v, i in zip(vr.tolist(), ir.tolist())]
                for vr, ir in zip(vals, idx)]

    def nearest(self, index: int, k: int = 10) -> list[dict]:
        """The ``k`` features whose decoder rows are closest in angle to feature ``index``'s, best first."""
        return self._top(self._cosines(torch.tensor([int(index)], device=self.W.device)), k)[0]

    def all(self, k: int = 10) -> Iterator[tuple[int, list[dict]]]:
        """``(i, nearest(i, k))`` for every feature, ``_CHUNK`` rows at a time (memory: ``_CHUNK * d_sae`` floats)."""
        for start in range(0, self.d_sae, _CHUNK):
            rows = torch.arange(start, min(start + _CHUNK, self.d_sae), device=self.W.device)
            for i, top in zip(rows.tolist(), self._top(self._cosines(rows), k)):
                yield i, top


def is_dense(density, threshold: float = DENSE_DENSITY) -> bool:
    """True when ``density`` (fraction of tokens where the feature is active) is a finite number above ``threshold``."""
    return isinstance(density, (int, float)) and math.isfinite(density) and density > threshold


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


class LensIndex:
    """Search features by the tokens their decoder direction promotes most (the logit lens): ``"God"`` finds a
    feature whose top promoted tokens include ``" God"``. Tokens are compared as lower-case words."""

    def __init__(self, promoted: dict[int, list[str]]):
        self.by_word: dict[str, list[tuple[int, int, str]]] = {}
        for feature, tokens in promoted.items():
            for rank, tok in enumerate(tokens):
                for w in set(_words(tok)):
                    self.by_word.setdefault(w, []).append((rank, int(feature), tok))
        for hits in self.by_word.values():
            hits.sort()

    def search(self, q: str, limit: int) -> list[tuple[int, int, str, str]]:
        """``(feature, rank, "logit lens", token)`` for features promoting every word of ``q``, best rank first."""
        words = _words(q)
        if not words:
            return []
        per_word = [{f: (rank, tok) for rank, f, tok in reversed(self.by_word.get(w, []))} for w in words]
        common = set(per_word[0]).intersection(*per_word[1:])
        ranked = sorted(common, key=lambda f: (max(p[f][0] for p in per_word), f))
        return [(f, per_word[0][f][0], "logit lens", per_word[0][f][1]) for f in ranked[:limit]]


def explanation_summary(explanations: list[dict]) -> dict | None:
    """The newest explanation with one score to show: detection balanced accuracy when scored, else the first
    metric of its newest score. ``explanations``: ``FeatureStore.explanations(i)`` (newest first)."""
    if not explanations:
        return None
    e = explanations[0]
    score, scorer = None, None
    for s in sorted(e.get("scores") or [], key=lambda s: s.get("scorer") != "detection"):
        for metric in ("balanced_accuracy", *s.get("metrics", {})):
            v = s.get("metrics", {}).get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                score, scorer = float(v), f"{s.get('scorer')} {metric.replace('_', ' ')}"
                break
        if score is not None:
            break
    return {"explanation": e.get("explanation"), "model": e.get("model"), "score": score, "scorer": scorer}


def token_display(lm) -> Callable[[list[int]], list[str]]:
    """``display(ids) -> [str]`` for ``lm``'s tokenizer; an id outside the vocabulary is an InputError."""
    from ..lm.tokens import display_tokens

    n = int(lm.info.d_vocab)

    def display(ids) -> list[str]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise InputError(f"token id {bad[0]} is outside the vocabulary of {n}")
        return display_tokens(lm.tokenizer, ids)

    return display


def redisplay(rec, display: Callable[[list[int]], list[str]] | None):
    """``rec`` with the tokens of its examples replaced by ``display(ids)`` (split characters merged, see
    ``saescope.lm.tokens.display_tokens``). Positions outside the context (id -1) keep their stored string."""
    if display is None:
        return rec
    examples = list(rec.top) + [e for iv in rec.intervals for e in iv["examples"]]
    for ex in examples:
        shown = list(ex.tokens)
        run: list[int] = []
        for j, i in enumerate([*ex.ids, -1]):
            if isinstance(i, int) and i >= 0:
                run.append(j)
                continue
            if run:
                try:
                    for pos, s in zip(run, display([ex.ids[p] for p in run])):
                        shown[pos] = s
                except SaescopeError:       # a store holding ids of another vocabulary: its own strings
                    pass
                run = []
        ex.tokens = shown
    return rec
