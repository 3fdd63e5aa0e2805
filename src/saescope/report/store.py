"""The feature store: one SQLite file (``features.sqlite``) per SAE, one row per feature, indexed by feature id.

Tables::

    meta(key TEXT PRIMARY KEY, value TEXT)              JSON values: format, n_tokens, config, hist_edges, and
                                                        which SAE and model it was built from (``saescope.site.
                                                        describe``: model, hook, d_sae, sae_fingerprint, ...)
    features(id INTEGER PRIMARY KEY, density REAL, mean REAL, max REAL, n_active INTEGER, label TEXT, data TEXT)
                                                        data = FeatureRecord.to_dict() as JSON
    checkpoint(key TEXT PRIMARY KEY, value BLOB)        running state of an unfinished build (safetensors bytes)

A build writes ``<name>.partial`` (checkpointed, resumable) and renames it over ``<name>`` only when complete,
so an existing store is never left half-written. Labels from ``labels.json`` beside the SAE take precedence
over the labels recorded at build time. ``FeatureStore.for_sae`` refuses a store built for another SAE or model
(``saescope.site.check_artifact``).

Explanations and scores (``saescope explain``) live in tables of their own, described in ``store_explain``
(schema_version 2); stores written before have none, and read as having no explanations.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from .._io import disk_errors, publish
from ..errors import CheckpointError, ConfigError, InputError
from ..site import check_artifact, load_labels
from .accumulate import StatsConfig
from .records import FeatureRecord, FeatureStats
from .store_explain import SCHEMA_VERSION, LabelIndex, SearchHit, search_explanations  # noqa: F401

log = logging.getLogger(__name__)

STORE_FILE = "features.sqlite"
FORMAT = "saescope-features-1"

_SCHEMA = """
PRAGMA page_size = 16384;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS features(id INTEGER PRIMARY KEY, density REAL NOT NULL, mean REAL NOT NULL,
    max REAL NOT NULL, n_active INTEGER NOT NULL, label TEXT, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS features_density ON features(density);
CREATE INDEX IF NOT EXISTS features_max ON features(max);
CREATE TABLE IF NOT EXISTS checkpoint(key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""

SORT_KEYS = {"index": "id ASC", "density": "density DESC, id ASC", "max": "max DESC, id ASC",
             "label": "label IS NULL, label COLLATE NOCASE ASC, id ASC", "mean": "mean DESC, id ASC"}


@dataclass(frozen=True)
class FeatureSummary:
    """One index row: what the index page lists and sorts by."""
    index: int
    density: float
    mean: float
    max: float
    label: str | None

    def to_dict(self) -> dict:
        return {"index": self.index, "density": self.density, "mean": self.mean, "max": self.max, "label": self.label}


def default_store_path(sae) -> Path | None:
    """``features.sqlite`` beside the SAE, or None when the SAE has no directory."""
    path = getattr(sae, "path", None)
    return Path(path) / STORE_FILE if path else None


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        con = sqlite3.connect(path, check_same_thread=False)
    return con


def _write_meta(con: sqlite3.Connection, meta: dict) -> None:
    con.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    [(k, json.dumps(v)) for k, v in meta.items()])


def _write_features(con: sqlite3.Connection, records) -> None:
    con.executemany(
        "INSERT OR REPLACE INTO features(id, density, mean, max, n_active, label, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
        ((r.index, r.density, r.mean, r.max, r.n_active, r.label, _pack(r.to_dict())) for r in records))


def _pack(record: dict) -> bytes:
    """A record as zlib-compressed compact JSON (about 5× smaller than the text, which matters for bundled stores)."""
    return zlib.compress(json.dumps(record, separators=(",", ":")).encode("utf-8"), 9)


def _unpack(data: bytes | str) -> dict:
    """Inverse of ``_pack``; plain JSON text (stores written before compression) is read as is."""
    return json.loads(zlib.decompress(data) if isinstance(data, bytes) else data)


def stats_meta(stats: FeatureStats) -> dict:
    return {"format": FORMAT, "n_tokens": stats.n_tokens, "hist_edges": stats.hist_edges,
            "config": stats.config.to_dict(), "seconds": stats.seconds, **stats.meta,
            "d_sae": stats.meta.get("d_sae", len(stats.records))}


def write_store(path: str | Path, stats: FeatureStats) -> Path:
    """Write ``stats`` to a new SQLite file at ``path`` (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        con.executescript(_SCHEMA)
        with con:
            _write_meta(con, stats_meta(stats))
            _write_features(con, stats.records)
    finally:
        con.close()
    publish(tmp, path)
    return path


class PartialStore:
    """A store being built: ``<out>.partial`` holding checkpoints; ``finish`` completes it and renames it to ``out``."""

    def __init__(self, out: Path, config: StatsConfig, meta: dict, resume: bool = False):
        self.out = Path(out)
        self.path = self.out.with_name(self.out.name + ".partial")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not resume:
            log.info("discarding an unfinished build %s (pass resume to continue it)", self.path)
            self.path.unlink()
        if resume and not self.path.exists():
            log.info("nothing to resume at %s; starting from the beginning", self.path)
        self.con = sqlite3.connect(self.path)
        try:
            with disk_errors(self.path):    # a full disk is not a corrupt store
                self.con.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self.con.close()
            raise CheckpointError(f"{self.path}: not a feature store ({exc}); delete it and start again") from None
        row = self.con.execute("SELECT value FROM meta WHERE key='config'").fetchone()
        if row is not None and json.loads(row[0]) != config.to_dict():
            self.con.close()
            raise ConfigError(f"{self.path}: the unfinished build used other settings; run without --resume to start again")
        row = self.con.execute("SELECT value FROM meta WHERE key='sae_fingerprint'").fetchone()
        if row is not None and json.loads(row[0]) != meta.get("sae_fingerprint"):
            self.con.close()
            raise ConfigError(f"{self.path}: the unfinished build is for another SAE; run without --resume to start again")
        with disk_errors(self.path), self.con:
            _write_meta(self.con, {"format": FORMAT, "config": config.to_dict(), **meta})

    def load_checkpoint(self) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load

        row = self.con.execute("SELECT value FROM checkpoint WHERE key='state'").fetchone()
        if row is None:
            return None
        try:
            return load(bytes(row[0]))
        except Exception as exc:  # a corrupt blob
            raise CheckpointError(f"{self.path}: unreadable checkpoint ({exc}); delete it and start again") from None

    def save_checkpoint(self, state: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        blob = save(state)
        with disk_errors(self.path), self.con:  # one transaction: the previous checkpoint stays until this one is complete
            self.con.execute("INSERT OR REPLACE INTO checkpoint(key, value) VALUES ('state', ?)", (blob,))

    def finish(self, stats: FeatureStats) -> Path:
        with disk_errors(self.path):        # a full disk: DiskFullError naming the file (saescope._io)
            with self.con:
                _write_meta(self.con, stats_meta(stats))
                _write_features(self.con, stats.records)
                self.con.execute("DELETE FROM checkpoint")
            self.con.execute("VACUUM")
        self.con.close()
        publish(self.path, self.out)
        return self.out


class FeatureStore:
    """Read access to a ``features.sqlite``. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | Path, labels: dict[int, str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"feature store {self.path} does not exist; build it with `saescope dashboard`")
        self._lock = threading.Lock()
        self._con = _connect(self.path, readonly=True)
        try:
            self.meta = {k: json.loads(v) for k, v in self._con.execute("SELECT key, value FROM meta")}
        except sqlite3.DatabaseError as exc:
            self._con.close()
            raise CheckpointError(f"{self.path}: not a saescope feature store ({exc})") from None
        if self.meta.get("format") != FORMAT:
            self._con.close()
            raise CheckpointError(f"{self.path}: format {self.meta.get('format')!r} is not {FORMAT!r}; rebuild it")
        self.labels = dict(labels or {})

    @classmethod
    def for_sae(cls, sae, path: str | Path | None = None, lm=None, allow_mismatch: bool = False) -> "FeatureStore | None":
        """The store of ``sae`` (``path`` or ``features.sqlite`` beside it), or None when there is none. A store
        built for another SAE (or for another model than ``lm``) is a ConfigError unless ``allow_mismatch``."""
        p = Path(path) if path else default_store_path(sae)
        if p is None or not p.is_file():
            if path:
                raise InputError(f"feature store {path} does not exist; build it with `saescope dashboard`")
            return None
        store = cls(p, labels=load_labels(sae))
        try:
            check_artifact(store.meta, lm, sae, f"feature store {p}", allow_mismatch=allow_mismatch)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def for_sae_or_note(cls, sae, path: str | Path | None = None, lm=None,
                        allow_mismatch: bool = False) -> tuple["FeatureStore | None", str | None]:
        """Like ``for_sae``, but an unreadable store *beside* the SAE (no ``path`` given) becomes a note for the
        user instead of an error, so what else is known about a feature can still be shown."""
        try:
            return cls.for_sae(sae, path, lm=lm, allow_mismatch=allow_mismatch), None
        except CheckpointError as exc:
            if path:
                raise
            log.warning("%s", exc)
            return None, f"could not read the feature store: {exc}"

    @property
    def d_sae(self) -> int:
        return int(self.meta.get("d_sae") or len(self))

    @property
    def n_tokens(self) -> int:
        return int(self.meta.get("n_tokens", 0))

    @property
    def hist_edges(self) -> list[float]:
        return list(self.meta.get("hist_edges", []))

    def __len__(self) -> int:
        with self._lock:
            return self._con.execute("SELECT COUNT(*) FROM features").fetchone()[0]

    def get(self, index: int) -> FeatureRecord | None:
        """The record of feature ``index``, or None when the store has no row for it."""
        with self._lock:
            row = self._con.execute("SELECT data FROM features WHERE id = ?", (int(index),)).fetchone()
        if row is None:
            return None
        rec = FeatureRecord.from_dict(_unpack(row[0]))
        if index in self.labels:
            rec.label = self.labels[index]
        return rec

    def summaries(self, sort: str = "index", query: str | None = None, limit: int | None = None,
                  offset: int = 0, min_density: float = 0.0) -> list[FeatureSummary]:
        """Index rows sorted by ``index``/``density``/``max``/``mean``/``label``; ``query`` matches label or index."""
        if sort not in SORT_KEYS:
            raise InputError(f"sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
        with self._lock:
            rows = self._con.execute(f"SELECT id, density, mean, max, label FROM features WHERE density >= ? "
                                     f"ORDER BY {SORT_KEYS[sort]}", (min_density,)).fetchall()
        out = [FeatureSummary(i, d, m, x, self.labels.get(i, lab)) for i, d, m, x, lab in rows]
        if self.labels and sort == "label":
            out.sort(key=lambda s: (s.label is None, (s.label or "").lower(), s.index))
        if query:
            q = query.strip().lower()
            out = [s for s in out if q == str(s.index) or (s.label and q in s.label.lower())]
        return out[offset: None if limit is None else offset + limit]

    def records(self):
        """Every record, in index order (a generator)."""
        with self._lock:
            rows = self._con.execute("SELECT id, data FROM features ORDER BY id").fetchall()
        for i, data in rows:
            rec = FeatureRecord.from_dict(_unpack(data))
            if i in self.labels:
                rec.label = self.labels[i]
            yield rec

    # ---------------------------------------------------------------- explanations and search
    _label_index: "LabelIndex | None" = None        # built on the first search

    def _has_table(self, name: str) -> bool:
        row = self._con.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        return row is not None

    def _check_schema(self) -> None:
        with self._lock:
            row = self._con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = json.loads(row[0]) if row else 1
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise CheckpointError(f"{self.path}: schema_version {version!r} is newer than this saescope reads "
                                  f"({SCHEMA_VERSION}); upgrade saescope")

    def explanations(self, index: int | None = None) -> list[dict]:
        """Explanations (of feature ``index``, or all), newest first, each with its scores, newest first:
        ``[{"scorer": "detection", "judge": "llm:<model>", "n": n, "created": ..., "metrics": {"balanced_accuracy":
        v, "auroc": v}}]``. A store without explanation tables has none."""
        self._check_schema()
        with self._lock:
            if not self._has_table("explanations"):
                return []
            where, args = ("WHERE feature = ?", (int(index),)) if index is not None else ("", ())
            rows = self._con.execute(f"SELECT id, feature, explanation, model, method, created FROM explanations {where} "
                                     f"ORDER BY created DESC, id DESC", args).fetchall()
            ids = [r[0] for r in rows]
            scores: dict[int, dict] = {i: {} for i in ids}
            for s in range(0, len(ids), 500):
                chunk = ids[s:s + 500]
                for e, scorer, judge, key, metric, value, n, created in self._con.execute(
                        f"SELECT explanation, scorer, judge, key, metric, value, n, created FROM scores WHERE explanation "
                        f"IN ({','.join('?' * len(chunk))}) ORDER BY created DESC, rowid", chunk):
                    d = scores[e].setdefault(key, {"scorer": scorer, "judge": judge, "n": n, "created": created,
                                                   "metrics": {}})
                    d["metrics"][metric] = value
        return [{"feature": f, "explanation": t, "model": m, "method": me, "created": c, "scores": list(scores[i].values())}
                for i, f, t, m, me, c in rows]

    def search(self, q: str, limit: int = 20) -> list["SearchHit"]:
        """Features whose explanation or label matches ``q`` (all its words; the last may be a prefix), best first
        (bm25), with a snippet (matches between « and »). A number also finds that feature; a query without
        words (``⏎``) matches as a substring."""
        from .._checks import checked_int

        limit = checked_int(limit, "search limit", lo=1, hi=1000)
        if not isinstance(q, str) or len(q) > 500:
            raise InputError("search query: expected text of at most 500 characters")
        self._check_schema()
        q_int = q.strip()
        index_hit = int(q_int) if q_int.isdigit() and len(q_int) < 12 and int(q_int) < self.d_sae else None
        with self._lock:
            if self._label_index is None:
                rows = self._con.execute("SELECT id, label FROM features").fetchall()
                self._label_index = LabelIndex({**{i: lab for i, lab in rows if lab}, **self.labels})
            has_fts = self._has_table("explanations_fts")
            found = search_explanations(self._con, q, 4 * limit) if has_fts else []
            found += self._label_index.search(q, 4 * limit)
            best: dict[int, tuple] = {}
            for index, score, matched, snippet in found:
                if index not in best or score < best[index][0]:
                    best[index] = (score, matched, snippet)
            if index_hit is not None:
                best[index_hit] = (float("-inf"), "index", q_int)
            order = sorted(best, key=lambda i: (best[i][0], best[i][1] != "explanation", i))[:limit]
            latest = {}
            if self._has_table("explanations") and order:
                marks = ",".join("?" * len(order))
                for f, text, model in self._con.execute(
                        f"SELECT feature, explanation, model FROM explanations WHERE feature IN ({marks}) "
                        f"ORDER BY created, id", order):
                    latest[f] = (text, model)
        return [SearchHit(i, best[i][0], best[i][1], best[i][2], self._label_index.labels.get(i),
                          *latest.get(i, (None, None))) for i in order]

    def close(self) -> None:
        self._con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


