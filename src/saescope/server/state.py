"""What the app's routes share: the model, the SAE, the store, the caps and what is computed once.

    AppState(lm, sae, sae_spec, store, config)
        .record(i)        FeatureRecord (the store's, examples shown with merged characters; or the logit lens alone)
        .nearest(i)       [{"index", "cosine", "label"}]   decoder cosine, top ``NEAREST_K``
        .explanations(i)  the store's explanations of feature i (newest first), [] without a store
        .summaries()      index rows;  .explanation_summaries() {feature: explanation_summary}
        .search(q, limit) ``saescope.explain.search`` plus features whose logit lens promotes the words of q
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

from ..errors import SaescopeError

log = logging.getLogger(__name__)

NEAREST_K = 10
LENS_K = 10


class Gate:
    """At most ``cap`` holders; ``enter`` fails at once (-> 503) instead of queueing beyond it."""

    def __init__(self, cap: int):
        self.cap, self.n, self._lock = cap, 0, threading.Lock()

    @contextmanager
    def enter(self, what: str):
        from fastapi import HTTPException

        with self._lock:
            if self.n >= self.cap:
                raise HTTPException(503, f"busy: {self.cap} {what} already running; try again shortly")
            self.n += 1
        try:
            yield
        finally:
            with self._lock:
                self.n -= 1


class AppState:
    def __init__(self, lm, sae, sae_spec: str, store, config):
        from ..report.browse import DecoderNeighbours, token_display
        from ..site import attach, load_labels

        self.lm, self.sae, self.sae_spec, self.store, self.cfg = lm, sae, sae_spec, store, config
        self.att = attach(lm, sae)
        self.labels = load_labels(sae)
        self.meta = {**(store.meta if store is not None else {}), "model": lm.name,
                     "hook": sae.cfg.metadata.hook_name, "neuronpedia_id": sae.cfg.metadata.neuronpedia_id}
        self.model_lock = threading.Lock()        # interventions are hooks on the shared model: one request at a time
        self.gen_gate = Gate(config.max_concurrent_generations)
        self.read_gate = Gate(config.max_concurrent_reads)
        self.display = token_display(lm)
        self.neighbours = DecoderNeighbours(sae)
        self._lock = threading.Lock()
        self._lens_index = None

    @property
    def has_stats(self) -> bool:
        return self.store is not None

    def check_index(self, i: int) -> int:
        from fastapi import HTTPException

        if not 0 <= i < self.sae.d_sae:
            raise HTTPException(404, f"feature {i} does not exist: this SAE has {self.sae.d_sae} features "
                                     f"(0..{self.sae.d_sae - 1})")
        return i

    def record(self, i: int):
        from ..report.browse import redisplay
        from ..report.stats import FeatureRecord
        from ..site import logit_lens

        rec = self.store.get(i) if self.store is not None else None
        if rec is not None:
            if i in self.labels:
                rec.label = self.labels[i]
            return redisplay(rec, self.display)
        rec = FeatureRecord(i, 0.0, 0.0, 0.0, 0.0, 0, label=self.labels.get(i))   # no statistics: the logit lens
        if self.att.has_logit_lens:
            lens = logit_lens(self.lm, self.sae.feature_directions([i]).detach(), LENS_K)
            rec.pos_logits = self._lens_rows(lens.pos_values[0].tolist(), lens.pos_ids[0].tolist())
            rec.neg_logits = self._lens_rows(lens.neg_values[0].tolist(), lens.neg_ids[0].tolist())
        return rec

    def _lens_rows(self, values: list[float], ids: list[int]) -> list[tuple[str, float]]:
        return [(self.display([t])[0], round(v, 5)) for v, t in zip(values, ids)]

    def nearest(self, i: int) -> list[dict]:
        return [{**n, "label": self.labels.get(n["index"])} for n in self.neighbours.nearest(i, NEAREST_K)]

    def explanations(self, i: int) -> list[dict]:
        return self.store.explanations(i) if self.store is not None else []

    def explanation_summaries(self) -> dict[int, dict]:
        from ..report.browse import explanation_summary

        if self.store is None:
            return {}
        by_feature: dict[int, list[dict]] = {}
        for e in self.store.explanations():           # newest first
            by_feature.setdefault(int(e["feature"]), []).append(e)
        return {f: explanation_summary(es) for f, es in by_feature.items()}

    def summaries(self):
        from ..report.store import FeatureSummary

        if self.store is not None:
            return self.store.summaries()
        return [FeatureSummary(i, 0.0, 0.0, 0.0, self.labels.get(i)) for i in range(self.sae.d_sae)]

    def lens_index(self):
        """Words of every feature's top promoted tokens (from the store's records; built on the first search)."""
        from ..report.browse import LensIndex

        with self._lock:
            if self._lens_index is None:
                promoted = {}
                if self.store is not None:
                    for rec in self.store.records():
                        promoted[rec.index] = [str(t) for t, _ in rec.pos_logits[:LENS_K]]
                self._lens_index = LensIndex(promoted)
            return self._lens_index

    def search(self, q: str, limit: int) -> dict:
        """Explanations and labels (``saescope.explain.search``), then features whose logit lens promotes every
        word of ``q`` (``matched: "logit lens"``, ``snippet``: the token), up to ``limit`` in all."""
        from ..explain.search import search_features
        from ..report.browse import explanation_summary

        out = search_features(self.store, q, limit, self.labels)
        seen = {h["index"] for h in out["features"]}
        room = limit - len(out["features"])
        if room > 0 and q.strip():
            try:
                lens_hits = self.lens_index().search(q, limit)
            except SaescopeError as exc:       # an unreadable record: the other hits still count
                log.warning("logit-lens search skipped: %s", exc)
                lens_hits = []
            for f, rank, matched, token in lens_hits:
                if f not in seen and room > 0:
                    e = explanation_summary(self.explanations(f)) or {}
                    out["features"].append({"index": f, "score": None, "matched": matched, "snippet": token,
                                            "lens_rank": rank + 1, "label": self.labels.get(f),
                                            "label_source": "auto" if f in self.labels else None,
                                            "explanation": e.get("explanation"), "explanation_model": e.get("model")})
                    seen.add(f)
                    room -= 1
        return out
