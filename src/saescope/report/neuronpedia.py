"""Export a feature store to Neuronpedia's upload layout.

Neuronpedia imports a source as gzipped JSON-lines batches, one object per line, with the field names of its
database rows (the ``Feature`` and ``Activation`` tables, as written by Neuronpedia's own export utilities)::

    <out>/<modelId>/<layer>-<set>/source.jsonl
    <out>/<modelId>/<layer>-<set>/features/batch-<n>.jsonl.gz       one Feature per line
    <out>/<modelId>/<layer>-<set>/activations/batch-<n>.jsonl.gz    one Activation (a context) per line

Fields saescope has no data for are present with empty values (empty lists, null), as Neuronpedia's schema
allows. The histogram is the store's log-spaced activation histogram (bar values = geometric bin centres).

Explanations made by ``saescope explain`` go, when the store has any, into
``<source>/explanations/batch-<n>.jsonl.gz``, one ``Explanation`` row each (the fields of Neuronpedia's own
explanation export; its import reads this folder). ``description`` is the explanation; ``typeName`` and
``explanationModelName`` refer to rows of Neuronpedia's ``ExplanationType``/``ExplanationModelType`` tables, so
they are null unless given (``explanation_type``, ``explanation_model_names``). Neuronpedia's exports carry no
score rows, so the scores and the explainer model go into the row's ``notes`` text. Automatic labels are not
exported as explanations.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .._io import atomic_write_bytes, atomic_write_text
from ..errors import InputError
from .store import FeatureStore

FEATURE_FIELDS = (
    "modelId", "layer", "index", "creatorId", "createdAt", "maxActApprox", "hasVector", "vector", "vectorLabel",
    "vectorDefaultSteerStrength", "hookName", "topkCosSimIndices", "topkCosSimValues", "neuron_alignment_indices",
    "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices", "correlated_neurons_pearson",
    "correlated_neurons_l1", "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_heights",
    "freq_hist_data_bar_values", "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist",
)
ACTIVATION_FIELDS = (
    "id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue", "values", "creatorId",
    "dataSource", "dataIndex", "dfaValues", "dfaTargetIndex", "dfaMaxValue", "createdAt", "lossValues",
    "logitContributions", "binMin", "binMax", "binContains", "qualifyingTokenIndex",
)
EXPLANATION_FIELDS = ("id", "modelId", "layer", "index", "authorId", "description", "embedding", "typeName",
                      "explanationModelName", "umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity", "notes",
                      "createdAt")
SOURCE_FIELDS = ("id", "modelId", "setName", "visibility", "dataset", "num_prompts", "num_tokens_in_prompt",
                 "hfRepoId", "hfFolderId", "creatorId")

_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ExportResult:
    source_dir: Path
    n_features: int
    n_activations: int
    feature_files: list[Path]
    activation_files: list[Path]
    explanation_files: list[Path] = ()


def _cuid(*parts) -> str:
    """A deterministic 25-character id in the style of Neuronpedia's cuids (lowercase, starts with a letter)."""
    h = int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest(), 16)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    for _ in range(24):
        h, r = divmod(h, 36)
        out.append(digits[r])
    return "c" + "".join(out)


def _write_gz(path: Path, rows: list[dict]) -> None:
    def write(f):
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=5, mtime=0) as gz:
            for row in rows:
                gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

    atomic_write_bytes(path, write)


def _model_id(meta: dict) -> str:
    name = str(meta.get("model") or "model").rstrip("/")
    local = meta.get("model_source") == "local"     # recorded by the model layer's one path rule
    name = name.rsplit("/", 1)[-1] if local else name.replace("/", "-")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._") or "model"


def _feature_row(rec, where: dict, vector: list, centers: list[float]) -> dict:
    """One feature in Neuronpedia's feature schema (fields saescope has no data for are empty)."""
    return {
        **where, "index": str(rec.index), "maxActApprox": rec.max, "hasVector": bool(vector), "vector": vector,
        "vectorLabel": rec.label if vector else None, "vectorDefaultSteerStrength": rec.max if vector else 10,
        "hookName": where["hookName"] if vector else None,
        "topkCosSimIndices": [], "topkCosSimValues": [],
        "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
        "correlated_neurons_indices": [], "correlated_neurons_pearson": [], "correlated_neurons_l1": [],
        "correlated_features_indices": [], "correlated_features_pearson": [], "correlated_features_l1": [],
        "neg_str": [s for s, _ in rec.neg_logits], "neg_values": [v for _, v in rec.neg_logits],
        "pos_str": [s for s, _ in rec.pos_logits], "pos_values": [v for _, v in rec.pos_logits],
        "frac_nonzero": rec.density,
        "freq_hist_data_bar_heights": [c for c in rec.hist if c],
        "freq_hist_data_bar_values": [x for x, c in zip(centers, rec.hist) if c],
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [], "decoder_weights_dist": [],
    }


def _activation_rows(rec, where: dict, data_source) -> list[dict]:
    """The feature's top examples and interval samples in Neuronpedia's activation schema."""
    groups = [(None, None, e) for e in rec.top] + [(iv["lo"], iv["hi"], e) for iv in rec.intervals for e in iv["examples"]]
    rows = []
    for j, (lo, hi, ex) in enumerate(groups):
        mx = max(ex.acts)
        rows.append({
            "id": _cuid(where["modelId"], where["layer"], rec.index, j), "tokens": ex.tokens, "index": str(rec.index),
            "layer": where["layer"], "modelId": where["modelId"], "maxValue": mx, "maxValueTokenIndex": ex.acts.index(mx),
            "minValue": min(ex.acts), "values": ex.acts, "creatorId": where["creatorId"], "dataSource": data_source,
            "dataIndex": None, "dfaValues": [], "dfaTargetIndex": None, "dfaMaxValue": None,
            "createdAt": where["createdAt"], "lossValues": [], "logitContributions": None, "binMin": lo, "binMax": hi,
            "binContains": None, "qualifyingTokenIndex": ex.center,
        })
    return rows


def export_neuronpedia(store: FeatureStore, out_dir: str | Path, model_id: str | None = None, set_name: str = "saescope",
                       layer: int | None = None, creator_id: str = "saescope", features_per_batch: int = 128,
                       include_vectors: bool = False, sae=None, explanation_type: str | None = None,
                       explanation_model_names: dict | None = None) -> ExportResult:
    """Write ``store`` as Neuronpedia feature/activation batches under ``out_dir/<modelId>/<layer>-<set_name>/``.

    model_id defaults to the store's model name; layer to the hook's layer (``blocks.L.``). ``include_vectors``
    (needs ``sae``) adds each feature's decoder direction as its steering vector.
    """
    meta = store.meta
    model_id = _model_id(meta) if model_id is None else model_id
    hook = str(meta.get("hook") or "")
    if layer is None:
        m = re.match(r"blocks\.(\d+)\.", hook)
        layer = int(m.group(1)) if m else 0
    for name, value in (("model id", model_id), ("set name", set_name)):
        if not _SLUG.match(value):
            raise InputError(f"Neuronpedia {name} {value!r} must be letters, digits, '.', '_' or '-'")
    if include_vectors and sae is None:
        raise InputError("include_vectors needs the SAE")
    source_id = f"{layer}-{set_name}"
    src = Path(out_dir) / model_id / source_id
    (src / "features").mkdir(parents=True, exist_ok=True)
    (src / "activations").mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc).isoformat()
    edges = store.hist_edges
    centers = [math.sqrt(edges[i] * edges[i + 1]) for i in range(len(edges) - 1)]
    cfg = meta.get("config", {})
    source = {"id": source_id, "modelId": model_id, "setName": set_name, "visibility": "PUBLIC",
              "dataset": meta.get("dataset"), "num_prompts": meta.get("n_contexts"),
              "num_tokens_in_prompt": cfg.get("context_size"), "hfRepoId": None, "hfFolderId": None,
              "creatorId": creator_id}
    atomic_write_text(src / "source.jsonl", json.dumps(source) + "\n")
    where = {"modelId": model_id, "layer": source_id, "creatorId": creator_id, "createdAt": created, "hookName": hook}

    feats, acts, ffiles, afiles = [], [], [], []
    n_feat = n_act = 0

    def write_batch() -> None:
        batch = len(ffiles)
        ffiles.append(src / "features" / f"batch-{batch}.jsonl.gz")
        afiles.append(src / "activations" / f"batch-{batch}.jsonl.gz")
        _write_gz(ffiles[-1], feats)
        _write_gz(afiles[-1], acts)
        feats.clear()
        acts.clear()

    for rec in store.records():
        vector = []
        if include_vectors:
            vector = [round(float(x), 6) for x in sae.feature_directions([rec.index])[0].tolist()]
        feats.append(_feature_row(rec, where, vector, centers))
        rows = _activation_rows(rec, where, meta.get("dataset"))
        acts.extend(rows)
        n_feat += 1
        n_act += len(rows)
        if len(feats) >= features_per_batch:
            write_batch()
    if feats:
        write_batch()
    efiles = export_explanations(store, src, model_id, source_id, creator_id, created, explanation_type,
                                 explanation_model_names, features_per_batch)
    return ExportResult(src, n_feat, n_act, ffiles, afiles, efiles)


def _notes(e: dict) -> str:
    """The explainer and the scores of an explanation, as one line of text."""
    parts = [f"saescope {e['method']} explanation by {e['model']}"]
    for sc in e["scores"]:
        shown = ", ".join(f"{m} {v:.3f}" for m, v in sc["metrics"].items() if v is not None)
        parts.append(f"{sc['scorer']} ({sc['judge']}, n={sc['n']}): {shown or 'undefined'}")
    return "; ".join(parts)


def export_explanations(store: FeatureStore, src: Path, model_id: str, source_id: str, creator_id: str, created: str,
                        explanation_type: str | None = None, explanation_model_names: dict | None = None,
                        per_batch: int = 128) -> list[Path]:
    """Write the store's explanations as Neuronpedia ``Explanation`` rows under ``src/explanations/``."""
    rows = [{"id": _cuid(model_id, source_id, e["feature"], "explanation", e["model"], e["method"], e["created"]),
             "modelId": model_id, "layer": source_id, "index": str(e["feature"]), "authorId": creator_id,
             "description": e["explanation"], "embedding": None, "typeName": explanation_type,
             "explanationModelName": (explanation_model_names or {}).get(e["model"]), "umap_x": None, "umap_y": None,
             "umap_cluster": None, "umap_log_feature_sparsity": None, "notes": _notes(e), "createdAt": created}
            for e in sorted(store.explanations(), key=lambda e: (e["feature"], e["created"]))]
    files = []
    if not rows:
        return files
    (src / "explanations").mkdir(parents=True, exist_ok=True)
    for b, s in enumerate(range(0, len(rows), per_batch)):
        path = src / "explanations" / f"batch-{b}.jsonl.gz"
        _write_gz(path, rows[s:s + per_batch])
        files.append(path)
    return files
