"""Search features by explanation and label: what ``GET /api/search?q=`` answers.

    search_features(store, "bible", limit=20, labels=None) -> {"query", "features": [hit, ...]}

Each hit: ``index``, ``score`` (bm25, lower is better), ``matched`` ("explanation" | "label" | "index"),
``snippet`` (matches between « and », plain text: escape it like any other text), ``label`` with
``label_source: "auto"`` (the automatic n-gram labels), and the newest ``explanation`` with its model.
With no store (no statistics), the labels alone are searched.
"""
from __future__ import annotations

from .._checks import checked_int
from ..errors import InputError


def search_features(store, q: str, limit: int = 20, labels: dict[int, str] | None = None) -> dict:
    from ..report.store import LabelIndex, SearchHit

    limit = checked_int(limit, "limit", lo=1, hi=1000)
    if not isinstance(q, str) or len(q) > 500:
        raise InputError("q: expected text of at most 500 characters")
    if not q.strip():
        return {"query": q, "features": []}
    if store is not None:
        hits = store.search(q, limit)
    else:
        index = LabelIndex(labels or {})
        found = sorted(index.search(q, limit), key=lambda h: (h[1], h[0]))
        hits = [SearchHit(i, s, m, snip, index.labels.get(i)) for i, s, m, snip in found]
    return {"query": q, "features": [h.to_dict() for h in hits]}
