"""The saved attribution graphs the web app shows: a folder listing, and each file read and checked.

    GraphFolder(paths, max_bytes=DEFAULT_MAX_BYTES)
        .listing() -> {name: Path}        re-read on every call (a new ``saescope trace --out`` file shows at once)
        .load(name) -> dict               the graph JSON, checked; cached by (path, size, mtime)
        .summaries() -> [GraphSummary]    one row per graph for the list page (an unreadable file: its error)
    feature_link_layers(graph, sae_spec, sae_paths) -> [str]   layers whose transcoder is the served SAE

A graph file is saescope's compact graph (``.safetensors``, shown pruned with the default thresholds by
``saescope.graph.to_json``) or Neuronpedia's attribution-graph JSON as circuit-tracer writes it: ``metadata`` (``slug``,
``prompt``, ``prompt_tokens``, ``node_threshold``, ...), ``qParams`` (``pinnedIds``, ``supernodes``, ...),
``nodes`` (``node_id``, ``feature``, ``layer``, ``ctx_idx``, ``feature_type``, ``clerp``, ``influence``,
``activation``, ...) and ``links`` (``source``, ``target``, ``weight``). A graph's name is its file name without
the extension (``NAME.json`` first when both exist); a request names a graph, never a path: only names in the
listing are opened. A file that is not such a graph is a one-line ``InputError`` naming the file and the field.
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, SaescopeError

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +-]{0,199}$")
SKIP = {"graph-metadata.json"}          # circuit-tracer's index of a folder of graphs, not a graph
FEATURE_TYPES = {"embedding", "cross layer transcoder", "mlp reconstruction error", "logit"}


@dataclass(frozen=True)
class GraphSummary:
    name: str
    prompt: str | None = None
    n_nodes: int = 0
    n_links: int = 0
    error: str | None = None


class GraphFolder:
    """Graph files from folders (every ``*.json`` in them, not recursive) and single files."""

    def __init__(self, paths, max_bytes: int = DEFAULT_MAX_BYTES):
        self.paths = [Path(p).expanduser() for p in paths]
        self.max_bytes = max_bytes
        self._cache: dict[Path, tuple[tuple[int, int], dict]] = {}
        self._lock = threading.Lock()

    def listing(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in self.paths:
            if p.is_dir():
                files = sorted(p.glob("*.json")) + sorted(f for f in p.glob("*.safetensors") if is_compact_graph(f))
            else:
                files = [p] if p.is_file() else []
            for f in files:
                name = f.stem
                if f.name in SKIP or not NAME_RE.match(name) or not f.is_file():
                    continue
                if name in out:
                    log.warning("graph %s: %s is hidden by %s (same name)", name, f, out[name])
                    continue
                out[name] = f
        return out

    def path(self, name: str) -> Path | None:
        return self.listing().get(name) if isinstance(name, str) and NAME_RE.match(name) else None

    def load(self, name: str) -> dict:
        """The checked graph called ``name``; KeyError when no such graph is listed."""
        path = self.path(name)
        if path is None:
            raise KeyError(name)
        try:
            st = path.stat()
        except OSError as exc:
            raise InputError(f"{path.name}: cannot be read ({exc.strerror})") from None
        key = (st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._cache.get(path)
            if hit is not None and hit[0] == key:
                return hit[1]
        if st.st_size > self.max_bytes:
            raise InputError(f"{path.name}: {st.st_size:,} bytes is more than the {self.max_bytes:,}-byte limit "
                             "for a graph file; prune the graph (higher thresholds) and save it again")
        if path.suffix.lower() == ".safetensors":
            graph = check_graph(compact_to_json(path, name), path.name)
            with self._lock:
                self._cache[path] = (key, graph)
            return graph
        try:
            text = path.read_bytes().decode("utf-8")
            data = json.loads(text)
        except UnicodeDecodeError:
            raise InputError(f"{path.name}: not UTF-8 text, so not a graph JSON file") from None
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise InputError(f"{path.name}: not valid JSON ({where}: {exc.msg})") from None
        except OSError as exc:
            raise InputError(f"{path.name}: cannot be read ({exc.strerror})") from None
        graph = check_graph(data, path.name)
        with self._lock:
            self._cache[path] = (key, graph)
        return graph

    def summaries(self) -> list[GraphSummary]:
        rows = []
        for name in self.listing():
            try:
                g = self.load(name)
            except (SaescopeError, KeyError) as exc:
                rows.append(GraphSummary(name, error=str(exc)))
                continue
            rows.append(GraphSummary(name, g["metadata"].get("prompt"), len(g["nodes"]), len(g["links"])))
        return rows


def is_compact_graph(path: Path) -> bool:
    """Whether ``path`` is a safetensors file whose header says it is saescope's compact graph (header only)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= 1 << 24:
                return False
            head = json.loads(f.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(head, dict) and isinstance(head.get("__metadata__"), dict) \
        and "saescope_graph" in head["__metadata__"]


def compact_to_json(path: Path, name: str) -> dict:
    """A compact graph (``saescope trace --out NAME.safetensors``) as Neuronpedia's JSON, pruned with the default
    thresholds (``saescope.graph.to_json``; no labels: a ``.json`` from ``saescope trace`` carries them)."""
    try:
        from ..graph import load_graph, to_json
    except ImportError:
        raise InputError(f"{path.name}: reading a compact graph needs saescope.graph, which this installation "
                         "lacks") from None
    try:
        return to_json(load_graph(path), slug=name)
    except SaescopeError as exc:         # the file's name, as every other message here (not the full path)
        raise InputError(str(exc).replace(str(path), path.name)) from None


def _need(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise InputError(f"{where}: {what}; is this a graph written by `saescope trace` (Neuronpedia's graph JSON)?")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_graph(data, fname: str) -> dict:
    """``data`` if it has the fields the view reads, with the right types; else an InputError naming the field."""
    _need(isinstance(data, dict), fname, "the top level is not a JSON object")
    for key, kind in (("metadata", dict), ("nodes", list), ("links", list)):
        _need(isinstance(data.get(key), kind), f"{fname}: {key}", f"missing or not a {kind.__name__}")
    meta = data["metadata"]
    toks = meta.get("prompt_tokens")
    _need(isinstance(toks, list) and all(isinstance(t, str) for t in toks), f"{fname}: metadata.prompt_tokens",
          "missing or not a list of strings")
    if meta.get("prompt") is not None:
        _need(isinstance(meta["prompt"], str), f"{fname}: metadata.prompt", "not a string")
    q = data.get("qParams")
    if q is None:
        data["qParams"] = q = {}
    _need(isinstance(q, dict), f"{fname}: qParams", "not an object")
    ids = set()
    for i, n in enumerate(data["nodes"]):
        at = f"{fname}: nodes[{i}]"
        _need(isinstance(n, dict), at, "not an object")
        _need(isinstance(n.get("node_id"), str) and n["node_id"] != "", f"{at}.node_id", "missing or not a string")
        _need(n["node_id"] not in ids, f"{at}.node_id", f"{n['node_id']!r} appears twice")
        ids.add(n["node_id"])
        layer = n.get("layer")
        _need(isinstance(layer, (str, int)) and not isinstance(layer, bool), f"{at}.layer", "missing or not a string")
        _need(n.get("feature_type") == "embedding" or str(layer).isdigit(), f"{at}.layer",
              f"{str(layer)[:20]!r} is not a layer number")
        _need(isinstance(n.get("ctx_idx"), int) and not isinstance(n.get("ctx_idx"), bool)
              and 0 <= n["ctx_idx"] < max(len(toks), 1), f"{at}.ctx_idx",
              f"missing or not a position of the {len(toks)} prompt tokens")
        _need(n.get("feature_type") in FEATURE_TYPES, f"{at}.feature_type",
              f"must be one of {', '.join(sorted(FEATURE_TYPES))}")
        for k in ("influence", "activation", "token_prob"):
            _need(n.get(k) is None or _finite(n[k]), f"{at}.{k}", "not a finite number")
        _need(isinstance(n.get("clerp", ""), str), f"{at}.clerp", "not a string")
    for i, e in enumerate(data["links"]):
        at = f"{fname}: links[{i}]"
        _need(isinstance(e, dict), at, "not an object")
        for k in ("source", "target"):
            _need(e.get(k) in ids, f"{at}.{k}", "missing or not the node_id of a node in the file")
        _need(_finite(e.get("weight")), f"{at}.weight", "missing or not a finite number")
    for k in ("pinnedIds",):
        if q.get(k) is not None:
            _need(isinstance(q[k], list) and all(isinstance(x, str) for x in q[k]), f"{fname}: qParams.{k}",
                  "not a list of strings")
    if q.get("supernodes") is not None:
        _need(isinstance(q["supernodes"], list) and all(isinstance(s, list) and all(isinstance(x, str) for x in s)
                                                        for s in q["supernodes"]),
              f"{fname}: qParams.supernodes", "not a list of [name, node_id, ...] lists")
    return data


def layer_transcoders(meta: dict) -> dict[str, str]:
    """{layer: transcoder spec} from a graph's metadata: ``info.transcoders`` ({layer: spec} or a list by layer),
    else ``transcoder_list`` (circuit-tracer: one entry per layer). Empty when the graph does not say."""
    info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
    for src in (info.get("transcoders"), meta.get("transcoders"), meta.get("transcoder_list")):
        if isinstance(src, dict):
            return {str(k): _spec(v) for k, v in src.items() if _spec(v) and str(k).isdigit()}
        if isinstance(src, list) and src:
            return {str(i): _spec(v) for i, v in enumerate(src) if _spec(v)}
    return {}


def _spec(v) -> str | None:
    if isinstance(v, dict):
        v = v.get("sae") or v.get("spec") or v.get("path")
    return v if isinstance(v, str) and v else None


def feature_link_layers(graph: dict, sae_names, sae_paths=()) -> list[str]:
    """The layers of ``graph`` whose transcoder is the SAE the app serves (one of its names: the spec as given,
    ``site.sae_name``; or the same directory): their feature nodes link to the app's feature pages. Other layers
    get no link (never a guess)."""
    same = {sae_names} if isinstance(sae_names, str) else set(sae_names)
    resolved = set()
    for p in sae_paths:
        try:
            resolved.add(Path(p).expanduser().resolve())
        except (OSError, RuntimeError):
            pass
    out = []
    for layer, spec in layer_transcoders(graph["metadata"]).items():
        if spec in same:
            out.append(layer)
            continue
        try:
            if resolved and Path(spec).expanduser().resolve() in resolved:
                out.append(layer)
        except (OSError, RuntimeError, ValueError):
            pass
    return out
