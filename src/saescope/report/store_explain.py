"""Explanations and scores in the feature store, and full-text search over explanations and labels.

Tables (added to a ``features.sqlite`` on first use; the store's ``meta.schema_version`` becomes 2)::

    explanations(id, feature, explanation, model, method, key, settings, created, prompt_tokens, completion_tokens)
        key = hash of method + model + settings: a rerun with the same explainer skips the feature
    scores(explanation, feature, scorer, judge, key, metric, value, n, details, created)
        scorer: detection | fuzzing; judge: llm:<model> | oracle | coin-flip | constant:<p>;
        metric: balanced_accuracy | auroc (NULL when undefined); key = hash of scorer + judge + settings
    explanations_fts   FTS5 index of the explanation text, kept in step by triggers

Labels are searched through an in-memory FTS5 index (``LabelIndex``): they may come from ``labels.json`` beside
the SAE rather than from the store. Queries are reduced to quoted words, so FTS5 syntax in a query is inert.
"""
from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, ConfigError, InputError

SCHEMA_VERSION = 2          # 2: explanation tables (readers of version 1 ignore them; stores of version 1 have none)

_EXPLAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS explanations(id INTEGER PRIMARY KEY, feature INTEGER NOT NULL, explanation TEXT NOT NULL,
    model TEXT NOT NULL, method TEXT NOT NULL, key TEXT NOT NULL, settings TEXT NOT NULL, created TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0, UNIQUE(feature, key));
CREATE INDEX IF NOT EXISTS explanations_feature ON explanations(feature);
CREATE TABLE IF NOT EXISTS scores(explanation INTEGER NOT NULL REFERENCES explanations(id) ON DELETE CASCADE,
    feature INTEGER NOT NULL, scorer TEXT NOT NULL, judge TEXT NOT NULL, key TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL, n INTEGER NOT NULL, details TEXT NOT NULL, created TEXT NOT NULL, PRIMARY KEY(explanation, key, metric));
CREATE INDEX IF NOT EXISTS scores_feature ON scores(feature);
CREATE VIRTUAL TABLE IF NOT EXISTS explanations_fts USING fts5(explanation, tokenize = 'unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS explanations_ai AFTER INSERT ON explanations BEGIN
    INSERT INTO explanations_fts(rowid, explanation) VALUES (new.id, new.explanation); END;
CREATE TRIGGER IF NOT EXISTS explanations_ad AFTER DELETE ON explanations BEGIN
    DELETE FROM explanations_fts WHERE rowid = old.id; END;
CREATE TRIGGER IF NOT EXISTS explanations_au AFTER UPDATE OF explanation ON explanations BEGIN
    UPDATE explanations_fts SET explanation = new.explanation WHERE rowid = new.id; END;
"""

# ---------------------------------------------------------------------- explanations and search


@dataclass(frozen=True)
class SearchHit:
    """One search result. ``matched``: "explanation", "label" or "index"; ``score``: bm25 (lower is better).
    Labels are the automatic ones (``label_source`` "auto"); ``explanation`` is the newest, if any."""
    index: int
    score: float
    matched: str
    snippet: str
    label: str | None
    explanation: str | None = None
    explanation_model: str | None = None

    def to_dict(self) -> dict:
        return {"index": self.index, "score": None if self.score == float("-inf") else self.score,
                "matched": self.matched, "snippet": self.snippet, "label": self.label,
                "label_source": "auto" if self.label is not None else None, "explanation": self.explanation,
                "explanation_model": self.explanation_model}


def fts_query(q: str) -> str | None:
    """An FTS5 query matching all the words of ``q`` (the last as a prefix), or None when ``q`` has no words.
    Words are quoted, so no FTS5 syntax in ``q`` is ever interpreted."""
    words = re.findall(r"\w+", q.lower())[:16]
    if not words:
        return None
    return " ".join(f'"{w}"' for w in words[:-1]) + (" " if len(words) > 1 else "") + f'"{words[-1]}"*'


def search_explanations(con: sqlite3.Connection, q: str, limit: int) -> list[tuple[int, float, str, str]]:
    """(feature, bm25, "explanation", snippet) for explanations matching ``q``."""
    query = fts_query(q)
    if query is None:
        needle = q.strip().lower()
        if not needle:
            return []
        rows = con.execute("SELECT feature, explanation FROM explanations WHERE instr(lower(explanation), ?) > 0 "
                           "LIMIT ?", (needle, limit)).fetchall()
        return [(f, 0.0, "explanation", t) for f, t in rows]
    rows = con.execute(
        "SELECT e.feature, bm25(explanations_fts), snippet(explanations_fts, 0, '«', '»', '…', 16) "
        "FROM explanations_fts JOIN explanations e ON e.id = explanations_fts.rowid "
        "WHERE explanations_fts MATCH ? ORDER BY bm25(explanations_fts) LIMIT ?", (query, limit)).fetchall()
    return [(f, score, "explanation", snip) for f, score, snip in rows]


class LabelIndex:
    """An in-memory FTS5 index of labels ``{feature: label}`` (labels may come from ``labels.json``, not the store)."""

    def __init__(self, labels: dict[int, str]):
        self.labels = dict(labels)
        self._con = sqlite3.connect(":memory:", check_same_thread=False)
        self._con.execute("CREATE VIRTUAL TABLE labels USING fts5(label, tokenize = 'unicode61 remove_diacritics 2')")
        with self._con:
            self._con.executemany("INSERT INTO labels(rowid, label) VALUES (?, ?)", self.labels.items())

    def search(self, q: str, limit: int) -> list[tuple[int, float, str, str]]:
        query = fts_query(q)
        if query is None:
            needle = q.strip().lower()
            return [(i, 0.0, "label", lab) for i, lab in self.labels.items() if needle and needle in lab.lower()][:limit]
        rows = self._con.execute("SELECT rowid, bm25(labels), snippet(labels, 0, '«', '»', '…', 16) FROM labels "
                                 "WHERE labels MATCH ? ORDER BY bm25(labels) LIMIT ?", (query, limit)).fetchall()
        return [(i, score, "label", snip) for i, score, snip in rows]


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ExplanationWriter:
    """Read-write access to the explanation tables of a store, created on first use (schema_version 2).

    Each ``save`` is one transaction: an interrupted run leaves every saved feature complete and nothing else.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"feature store {self.path} does not exist; build it with `saescope dashboard`")
        self.con = sqlite3.connect(self.path, timeout=30)
        try:
            from .store import FORMAT

            row = self.con.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if row is None or json.loads(row[0]) != FORMAT:
                raise CheckpointError(f"{self.path}: not a saescope feature store (format {row and row[0]!r})")
            row = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = json.loads(row[0]) if row else 1
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                raise CheckpointError(f"{self.path}: schema_version {version!r} is newer than this saescope writes")
            self.con.execute("PRAGMA foreign_keys = ON")
            with self.con:
                self.con.executescript("BEGIN;" + _EXPLAIN_SCHEMA + "COMMIT;")
                self.con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                                 (json.dumps(SCHEMA_VERSION),))
        except sqlite3.OperationalError as exc:
            self.con.close()
            if "fts5" in str(exc).lower():
                raise ConfigError(f"this Python's SQLite has no FTS5 module ({exc}); explanations need it") from None
            raise CheckpointError(f"{self.path}: cannot add explanation tables ({exc})") from None
        except (sqlite3.DatabaseError, CheckpointError) as exc:
            self.con.close()
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{self.path}: not a saescope feature store ({exc})") from None

    def explained(self, key: str) -> dict[int, tuple[int, str]]:
        """``{feature: (explanation id, text)}`` already made with ``key``."""
        rows = self.con.execute("SELECT feature, id, explanation FROM explanations WHERE key = ?", (key,)).fetchall()
        return {f: (i, t) for f, i, t in rows}

    def scored(self, key: str) -> set[int]:
        """Explanation ids that already have scores with scorer ``key``."""
        return {r[0] for r in self.con.execute("SELECT DISTINCT explanation FROM scores WHERE key = ?", (key,))}

    def save(self, feature: int, explanation: dict | None = None, explanation_id: int | None = None,
             scores: list[dict] = ()) -> int:
        """Store a new ``explanation`` (dict: text, model, method, key, settings, prompt_tokens, completion_tokens)
        or use ``explanation_id``, plus ``scores`` (dicts: scorer, judge, key, metrics, n, details), atomically."""
        now = _now()
        with self.con:
            if explanation is not None:
                e = explanation
                self.con.execute(
                    "INSERT INTO explanations(feature, explanation, model, method, key, settings, created, prompt_tokens, "
                    "completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(feature, key) DO UPDATE SET "
                    "explanation = excluded.explanation, model = excluded.model, created = excluded.created",
                    (int(feature), e["text"], e["model"], e["method"], e["key"], json.dumps(e.get("settings", {})), now,
                     int(e.get("prompt_tokens", 0)), int(e.get("completion_tokens", 0))))
                explanation_id = self.con.execute("SELECT id FROM explanations WHERE feature = ? AND key = ?",
                                                  (int(feature), e["key"])).fetchone()[0]
            if explanation_id is None:
                raise ValueError("save needs an explanation or an explanation id")
            for sc in scores:
                self.con.executemany(
                    "INSERT OR REPLACE INTO scores(explanation, feature, scorer, judge, key, metric, value, n, details, "
                    "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(explanation_id, int(feature), sc["scorer"], sc["judge"], sc["key"], metric, value, int(sc["n"]),
                      json.dumps(sc.get("details", {})), now) for metric, value in sc["metrics"].items()])
        return explanation_id

    def mean_scores(self, features: list[int], explain_key: str, scorer_keys: dict[str, str]) -> dict:
        """``{scorer: {metric: {"mean": m, "features": n}}}`` over ``features`` explained with ``explain_key``."""
        out: dict = {}
        wanted = set(int(f) for f in features)
        for name, key in scorer_keys.items():
            rows = self.con.execute(
                "SELECT s.feature, s.metric, s.value FROM scores s JOIN explanations e ON e.id = s.explanation "
                "WHERE e.key = ? AND s.key = ? AND s.value IS NOT NULL", (explain_key, key)).fetchall()
            per: dict[str, list[float]] = {}
            for f, metric, value in rows:
                if f in wanted:
                    per.setdefault(metric, []).append(value)
            order = sorted(per, key=lambda m: (m != "balanced_accuracy", m))
            out[name] = {m: {"mean": sum(per[m]) / len(per[m]), "features": len(per[m])} for m in order}
        return out

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
