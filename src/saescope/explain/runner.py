"""Explain and score the features of a feature store, resumably and concurrently.

    summary = explain_store("features.sqlite", LLMExplainer(client), judge=LLMJudge(client),
                            scorers=("detection", "fuzzing"), features=range(100), config=ExplainConfig())

Per feature: a seeded split of its examples (``split_examples``), an explanation from the explainer, then each
scorer on held-out examples (detection also on non-activating contexts from ``NegativePool``). Each finished
feature is saved in one transaction (``ExplanationWriter``); a rerun with the same explainer and settings skips
features already explained, and scorers already run on them. Up to ``concurrency`` features are in flight.
An error that every later request would repeat (endpoint gone, bad key) stops the run with one line; a reply
that cannot be read fails only its feature (listed in the summary; rerun to retry).
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from .._checks import checked_float, checked_int
from .._config import JsonConfig
from ..errors import ConfigError, InputError
from ..progress import progress
from .client import LLMError
from .explainer import NegativePool, split_examples
from .prompts import PROMPT_VERSION, ParseError
from .scoring import KINDS, detection_items, fuzzing_items, score

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExplainConfig(JsonConfig):
    explain_fraction: float = 0.6     # share of the top examples shown to the explainer (the rest are held out)
    max_explain: int = 10             # at most this many examples in the explainer's prompt
    n_positive: int = 10              # detection: held-out activating contexts
    n_negative: int = 10              # detection: non-activating contexts
    n_fuzz: int = 10                  # fuzzing: held-out activating contexts (every second one marked at random)
    judge_batch: int = 10             # contexts per judge request
    negative_features: int = 400      # features whose top examples make the pool of non-activating contexts
    seed: int = 0

    def __post_init__(self):
        checked_float(self.explain_fraction, "ExplainConfig.explain_fraction", lo=0, hi=1, lo_open=True, hi_open=True,
                      error=ConfigError)
        for name in ("max_explain", "judge_batch", "negative_features"):
            checked_int(getattr(self, name), f"ExplainConfig.{name}", lo=1, hi=10_000, error=ConfigError)
        for name in ("n_positive", "n_negative", "n_fuzz"):
            checked_int(getattr(self, name), f"ExplainConfig.{name}", lo=0, hi=10_000, error=ConfigError)
        checked_int(self.seed, "ExplainConfig.seed", lo=0, hi=2**63 - 1, error=ConfigError)


@dataclass
class ExplainSummary:
    store: str
    explainer: str
    judge: str | None
    negatives: str
    features: int = 0                 # selected
    explained: int = 0                # new explanations this run
    reused: int = 0                   # explained before (same explainer and settings)
    scored: int = 0                   # features that got new scores this run
    skipped: dict = field(default_factory=dict)      # reason -> count
    failed: list = field(default_factory=list)       # [{"feature", "error"}]
    means: dict = field(default_factory=dict)        # scorer -> metric -> {"mean", "features"}
    usage: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _Outcome:
    feature: int
    explanation: dict | None = None   # new explanation row
    explanation_id: int | None = None
    scores: list = field(default_factory=list)
    error: str | None = None


def parse_features(spec: str | None, d_sae: int) -> list[int]:
    """``"all"``, ``"0-99"``, ``"3,7,10-12"`` -> sorted feature ids, each checked against ``d_sae``."""
    if spec is None or spec.strip().lower() == "all":
        return list(range(d_sae))
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise InputError(f"--features: {part!r} is not an index or a range like 0-99") from None
        a = checked_int(a, f"--features {part!r}", lo=0, hi=d_sae - 1)
        b = checked_int(b, f"--features {part!r}", lo=a, hi=d_sae - 1)
        out.update(range(a, b + 1))
    return sorted(out)


def _key(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def explainer_key(explainer, config: ExplainConfig) -> str:
    return _key({"method": explainer.method, "model": explainer.model, "settings": explainer.settings(),
                 "split": [config.explain_fraction, config.max_explain, config.seed]})


def scorer_key(kind: str, judge, config: ExplainConfig, negatives: str) -> str:
    return _key({"scorer": kind, "judge": judge.name, "prompt": PROMPT_VERSION, "negatives": negatives,
                 "settings": [config.n_positive, config.n_negative, config.n_fuzz, config.judge_batch, config.seed]})


def _work(rec, explainer, judge, kinds, have: tuple[int, str] | None, pool, cfg: ExplainConfig, keys) -> _Outcome:
    """One feature: explain (unless ``have``), then score with each of ``kinds``. Runs in a worker thread."""
    out = _Outcome(rec.index)
    split = split_examples(rec, cfg.explain_fraction, cfg.max_explain, cfg.seed)
    try:
        if have is None:
            e = explainer.explain(rec, split.explain)
            out.explanation = {"text": e.text, "model": e.model, "method": explainer.method, "key": keys["explain"],
                               "settings": explainer.settings(), "prompt_tokens": e.prompt_tokens,
                               "completion_tokens": e.completion_tokens}
            text = e.text
        else:
            out.explanation_id, text = have
        for kind in kinds:
            rng = random.Random(f"{kind}|{cfg.seed}|{rec.index}")
            if kind == "detection":
                negatives = pool.sample(rec, cfg.n_negative, rng)
                items = detection_items(split.held_out, negatives, cfg.n_positive, cfg.n_negative, rng)
            else:
                items = fuzzing_items(split.held_out, cfg.n_fuzz, rng)
            if not items:
                continue
            res = score(kind, text, items, judge)
            res.details.update(negatives=pool.source if kind == "detection" else None, n_explain=len(split.explain))
            out.scores.append({"scorer": kind, "judge": res.judge, "key": keys[kind], "metrics": res.metrics,
                               "n": res.n, "details": {**res.details, "n_positive": res.n_positive,
                                                       "n_negative": res.n_negative, "n_unanswered": res.n_unanswered}})
    except (ParseError, LLMError) as exc:
        if isinstance(exc, LLMError) and exc.fatal:
            raise
        out.error = str(exc)
    return out


def explain_store(path: str | Path, explainer, judge=None, scorers=KINDS, features=None,
                  config: ExplainConfig = ExplainConfig(), concurrency: int = 4, prices: dict | None = None,
                  pool: NegativePool | None = None) -> ExplainSummary:
    """Explain (and score with ``judge``) ``features`` of the store at ``path`` (None: all); see the module doc."""
    from ..report.store import FeatureStore
    from ..report.store_explain import ExplanationWriter

    unknown = [s for s in scorers if s not in KINDS]
    if unknown:
        raise InputError(f"--scorers: unknown scorer {unknown[0]!r} (choose from {', '.join(KINDS)})")
    if scorers and judge is None:
        raise InputError("scoring needs a judge (an LLM endpoint, a local model, or --judge oracle|coin|yes)")
    concurrency = checked_int(concurrency, "--concurrency", lo=1, hi=1024)
    t0 = time.perf_counter()
    with FeatureStore(path) as store, ExplanationWriter(path) as writer:
        if len(store) == 0:
            raise InputError(f"{path}: the store has no feature statistics (0 features); build it with `saescope dashboard`")
        ids = list(range(store.d_sae)) if features is None else [int(f) for f in features]
        pool = pool if pool is not None else NegativePool.from_store(store, config.negative_features, seed=config.seed)
        keys = {"explain": explainer_key(explainer, config),
                **{k: scorer_key(k, judge, config, pool.source) for k in scorers}}
        summary = ExplainSummary(str(path), f"{explainer.method}:{explainer.model}", getattr(judge, "name", None),
                                 pool.source, features=len(ids))
        _run(store, writer, ids, explainer, judge, list(scorers), pool, config, keys, concurrency, summary)
        summary.means = writer.mean_scores(ids, keys["explain"], {k: keys[k] for k in scorers})
    if summary.skipped.get("no examples", 0) == len(ids):
        raise InputError(f"{path}: none of the {len(ids)} selected features has activating examples "
                         "(a store without statistics?)")
    clients = {id(c): c for c in (getattr(explainer, "client", None), getattr(judge, "client", None)) if c is not None}
    summary.usage = _merge_usage([c.usage.summary(prices) for c in clients.values()])
    summary.seconds = time.perf_counter() - t0
    return summary


def _run(store, writer, ids, explainer, judge, scorers, pool, cfg, keys, concurrency, summary) -> None:
    done = writer.explained(keys["explain"])
    scored = {k: writer.scored(keys[k]) for k in scorers}
    bar = progress(total=len(ids), desc="explain", unit="feature")
    pending: set = set()
    it = iter(ids)
    successes = failures_in_a_row = 0
    ex = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="saescope-explain")
    try:
        while True:
            while len(pending) < 2 * concurrency:
                f = next(it, None)
                if f is None:
                    break
                job = _job(store, f, done, scored, scorers, summary)
                if job is None:
                    bar.update(1)
                    continue
                rec, have, kinds = job
                pending.add(ex.submit(_work, rec, explainer, judge, kinds, have, pool, cfg, keys))
            if not pending:
                break
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in finished:
                out = fut.result()                       # a fatal LLMError stops the run here
                _save(writer, out, summary)
                bar.update(1)
                if out.error is None:
                    successes += 1
                    failures_in_a_row = 0
                    continue
                failures_in_a_row += 1
                if successes == 0 and failures_in_a_row >= max(3, concurrency):
                    raise LLMError(f"every request failed so far; the first error: {summary.failed[0]['error']}")
    finally:
        bar.close()
        for fut in pending:
            fut.cancel()
        ex.shutdown(wait=False, cancel_futures=True)


def _job(store, f: int, done: dict, scored: dict, scorers: list, summary: ExplainSummary):
    """(record, existing explanation, scorers to run) for feature ``f``, or None when there is nothing to do."""
    rec = store.get(f)
    if rec is None:
        summary.skipped["missing"] = summary.skipped.get("missing", 0) + 1
        return None
    if not any(max(e.acts, default=0.0) > 0 for e in rec.top):
        summary.skipped["no examples"] = summary.skipped.get("no examples", 0) + 1
        return None
    have = done.get(f)
    kinds = [k for k in scorers if have is None or have[0] not in scored[k]]
    if have is not None:
        summary.reused += 1
        if not kinds:
            summary.skipped["done"] = summary.skipped.get("done", 0) + 1
            return None
    return rec, have, kinds


def _save(writer, out: _Outcome, summary: ExplainSummary) -> None:
    if out.error is not None:
        summary.failed.append({"feature": out.feature, "error": out.error})
    if out.explanation is None and out.explanation_id is None:
        return
    writer.save(out.feature, out.explanation, out.explanation_id, out.scores)
    summary.explained += out.explanation is not None
    summary.scored += bool(out.scores)


def _merge_usage(parts: list[dict]) -> dict:
    if not parts:
        return {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "models": {}}
    out = {"requests": 0, "retries": 0, "replies_without_usage": 0, "prompt_tokens": 0, "completion_tokens": 0,
           "cost_usd": 0.0, "models": {}}
    for p in parts:
        for k in ("requests", "retries", "replies_without_usage", "prompt_tokens", "completion_tokens"):
            out[k] += p.get(k, 0)
        out["cost_usd"] = None if out["cost_usd"] is None or p["cost_usd"] is None else out["cost_usd"] + p["cost_usd"]
        out["models"].update(p["models"])
    return out
