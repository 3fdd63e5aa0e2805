"""The attribution-graph pages of the web app (``router(state, forms)``); ``static/graph.js`` draws the view.

    GET  /graphs                      the saved graphs (``saescope serve --graphs DIR``), one row each
    GET  /graph/{name}                the graph view: nodes by layer and position, edges by weight, hover details,
                                      pin / supernode, thresholds, interventions
    GET  /graph/{name}/feature/{layer}/{i}   feature i of the transcoder the graph records for that layer (a layer
                                      whose transcoder is the served SAE links to /feature/{i} instead)
    GET  /api/graphs                  [{"name", "prompt", "n_nodes", "n_links", "error"}]
    GET  /api/graph/{name}            the graph file's JSON (Neuronpedia's attribution-graph schema)
    POST /api/graph/{name}/intervene  {"nodes": [node_id, ...], "mode": "off"|"clamp", "value"?, "max_new_tokens"?,
                                      "top_k"?, "all_positions"?: false (only each node's position) }
                                      -> ``saescope.graph.intervene`` on the graph's prompt with its transcoders
                                      (metadata.transcoder_list, loaded once) and the served model:
                                      {"baseline": {"top": [{"token", "id", "prob"}], "generation"},
                                      "intervened": {...}, "nodes", "prompt", "graph", "mode"}

A name is looked up in the folder listing (graph_files.GraphFolder), never joined to a path. An unknown name is
a 404 page, an unreadable or malformed file a 422 page with one line naming the file and the field.
"""
# no "from __future__ import annotations": FastAPI reads the request model from the annotations of local functions
import threading
from html import escape
from urllib.parse import quote


def intervene_model(cfg):
    from pydantic import BaseModel, ConfigDict, Field

    class InterveneRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        nodes: list[str] = Field(min_length=1, max_length=256)
        mode: str = Field("off", pattern="^(off|clamp)$")
        value: float = Field(0.0, allow_inf_nan=False)
        max_new_tokens: int = Field(16, ge=1, le=cfg.max_new_tokens)
        top_k: int = Field(10, ge=1, le=cfg.max_top_k)
        all_positions: bool = False      # the edit at every position (generated ones too), not only the node's

    return InterveneRequest


def router(st, forms):
    from fastapi import APIRouter, HTTPException
    from fastapi.responses import HTMLResponse

    from ..errors import SaescopeError
    from ..report import html
    from ..site import sae_name
    from .graph_files import feature_link_layers, layer_transcoders

    r = APIRouter()
    folder = st.graphs
    InterveneRequest = intervene_model(st.cfg)
    transcoders: dict = {}         # the transcoder set of the last graph intervened on
    states: dict = {}              # transcoder spec -> AppState, for the feature pages of a graph's other layers
    states_lock = threading.Lock()
    sae_paths = [st.sae.path] if getattr(st.sae, "path", None) is not None else []
    sae_names = {st.sae_spec, sae_name(st.sae)}

    def page(title: str, body: str, status: int = 200, scripts: str = "") -> HTMLResponse:
        head = "<link rel=\"stylesheet\" href=\"/static/graph.css\">"
        return HTMLResponse(html.page(title, head + body, html.header("/", st.meta), scripts), status_code=status)

    def not_found(name: str) -> HTMLResponse:
        return page("not found", f"<h1>No graph {escape(name)}</h1><p>The graphs are the <code>.json</code> files "
                                 "in the folders given to <code>saescope serve --graphs</code>. "
                                 "<a href=\"/graphs\">All graphs</a></p>", status=404)

    def load_or_page(name: str):
        try:
            return folder.load(name), None
        except KeyError:
            return None, not_found(name)
        except SaescopeError as exc:
            return None, page("unreadable graph", f"<h1>Graph {escape(name)} cannot be shown</h1>"
                                                  f"<p class=\"err\">{escape(str(exc))}</p><p><a href=\"/graphs\">"
                                                  "All graphs</a></p>", status=422)

    def load_or_404(name: str) -> dict:
        try:
            return folder.load(name)
        except KeyError:
            raise HTTPException(404, f"no graph named {name!r} in the graphs folder") from None

    @r.get("/graphs", response_class=HTMLResponse)
    def graphs_page():
        rows = []
        for s in folder.summaries():
            link = f"<a href=\"/graph/{quote(s.name)}\">{escape(s.name)}</a>"
            if s.error:
                rows.append(f"<tr><td>{link}</td><td colspan=\"3\" class=\"err\">{escape(s.error)}</td></tr>")
            else:
                rows.append(f"<tr><td>{link}</td><td class=\"prompt\">{html.show_token(s.prompt or '')}</td>"
                            f"<td class=\"num\">{s.n_nodes}</td><td class=\"num\">{s.n_links}</td></tr>")
        where = ", ".join(escape(str(p)) for p in folder.paths) or "none given"
        if rows:
            table = ("<table id=\"graphs\"><thead><tr><th>graph</th><th>prompt</th><th>nodes</th><th>links</th></tr>"
                     f"</thead><tbody>{''.join(rows)}</tbody></table>")
        else:
            table = ("<p class=\"note\">No graphs yet. Make one with <code>saescope trace \"PROMPT\" --out "
                     "graphs/NAME.json</code> and serve the folder with <code>saescope serve --graphs graphs</code>."
                     "</p>")
        return page("saescope · graphs", f"<h1>Attribution graphs</h1><p class=\"muted\">from {where}</p>{table}")

    @r.get("/graph/{name}", response_class=HTMLResponse)
    def graph_page(name: str):
        graph, err = load_or_page(name)
        if err is not None:
            return err
        meta = graph["metadata"]
        config = {"name": name, "api": f"/api/graph/{quote(name)}", "feature_url": "/feature/",
                  "link_layers": feature_link_layers(graph, sae_names, sae_paths),
                  "layer_feature_url": f"/graph/{quote(name)}/feature/",
                  "transcoder_layers": sorted(layer_transcoders(meta), key=int),
                  "max_new_tokens": st.cfg.max_new_tokens}
        body = (f"<p class=\"muted\"><a href=\"/graphs\">all graphs</a></p><h1>Graph {escape(name)}</h1>"
                f"<div class=\"prompt-box\">{html.show_token(meta.get('prompt') or '')}</div>{facts_html(graph)}"
                f"{view_html()}<script type=\"application/json\" id=\"graph-data\">{html.json_for_html(graph)}"
                f"</script><script type=\"application/json\" id=\"graph-config\">{html.json_for_html(config)}</script>")
        return page(f"saescope · graph {name}", body, scripts="<script src=\"/static/graph.js\"></script>")

    @r.get("/graph/{name}/feature/{layer}/{index}", response_class=HTMLResponse)
    def graph_feature_page(name: str, layer: int, index: int):
        """A feature of the transcoder that a graph records for ``layer`` (loaded on first use; two kept), as the
        served SAE's feature page shows it: labels, explanations and statistics from its store, else the logit lens."""
        graph, err = load_or_page(name)
        if err is not None:
            return err
        spec = layer_transcoders(graph["metadata"]).get(str(layer))
        if spec is None:
            return page("not found", f"<h1>No transcoder for layer {layer}</h1><p>Graph {escape(name)} does not "
                                     "record one. <a href=\"/graphs\">All graphs</a></p>", status=404)
        try:
            sub = transcoder_state(spec)
        except SaescopeError as exc:
            return page("transcoder not loaded", f"<h1>Layer {layer}'s transcoder cannot be shown</h1><p>Graph "
                                                 f"{escape(name)} records <code>{escape(spec)}</code> for layer "
                                                 f"{layer}:</p><p class=\"err\">{escape(str(exc))}</p>", status=422)
        if not 0 <= index < sub.sae.d_sae:
            return page("not found", f"<h1>No feature {index}</h1><p>This transcoder has {sub.sae.d_sae} features."
                                     "</p>", status=404)
        rec = sub.record(index)
        body = (f"<p class=\"muted\"><a href=\"/graph/{quote(name)}\">graph {escape(name)}</a> · layer {layer} "
                f"transcoder <code>{escape(spec)}</code></p>")
        body += html.feature_body(rec, sub.meta, sub.store.hist_edges if sub.has_stats else [],
                                  link=lambda i: f"/graph/{quote(name)}/feature/{layer}/{i}",
                                  n_tokens=sub.store.n_tokens if sub.has_stats else None, has_stats=sub.has_stats,
                                  explanations=sub.explanations(index), nearest=sub.nearest(index),
                                  dense_density=st.cfg.dense_density)
        return page(f"Layer {layer} feature {index}" + (f" · {rec.label}" if rec.label else ""), body)

    def transcoder_state(spec: str):
        from ..report.store import FeatureStore
        from ..sae import SAE
        from .state import AppState

        with states_lock:
            if spec not in states:
                sae = SAE.from_spec(spec, device=st.lm.device)
                store, _ = FeatureStore.for_sae_or_note(sae, lm=st.lm)
                if len(states) >= 2:
                    states.pop(next(iter(states)))
                states[spec] = AppState(st.lm, sae, spec, store, st.cfg)
            return states[spec]

    @r.get("/api/graphs")
    def api_graphs():
        return [s.__dict__ for s in folder.summaries()]

    @r.get("/api/graph/{name}")
    def api_graph(name: str):
        return load_or_404(name)

    @r.post("/api/graph/{name}/intervene")
    def api_intervene(name: str, req: InterveneRequest):
        graph = load_or_404(name)
        known = {n["node_id"]: n for n in graph["nodes"]}
        for nid in req.nodes:
            if nid not in known:
                raise HTTPException(422, f"node {nid!r} is not in graph {name!r}")
            parts = nid.split("_")
            if known[nid]["feature_type"] != "cross layer transcoder" or len(parts) != 3 \
                    or not all(x.isdigit() for x in parts):
                raise HTTPException(422, f"node {nid!r} is not a transcoder feature ('layer_feature_position'): "
                                         "only features can be turned off or clamped")
        meta = graph["metadata"]
        specs = meta.get("transcoder_list") if isinstance(meta.get("transcoder_list"), list) else []
        if not specs or not all(isinstance(x, str) and x for x in specs):
            raise HTTPException(422, f"graph {name!r} does not record its transcoders (metadata.transcoder_list), "
                                     "so its features cannot be edited")
        if not isinstance(meta.get("prompt"), str) or not meta["prompt"]:
            raise HTTPException(422, f"graph {name!r} does not record its prompt (metadata.prompt)")
        try:
            from ..graph import intervene, load_transcoders
        except ImportError:
            raise HTTPException(501, "interventions need saescope.graph, which this installation lacks") from None
        value = 0.0 if req.mode == "off" else req.value
        if req.all_positions:            # node id "{layer}_{feature}_{pos}"
            edits = [{"layer": int(nid.split("_")[0]), "feature": int(nid.split("_")[1]), "position": None,
                      "value": value} for nid in req.nodes]
        else:
            edits = [{"node_id": nid, "value": value} for nid in req.nodes]
        with st.gen_gate.enter("generations"), st.model_lock:
            key = tuple(specs)
            if key not in transcoders:
                transcoders.clear()                      # one transcoder set in memory at a time
                transcoders[key] = load_transcoders(st.lm, ",".join(specs))
            res = intervene(st.lm, transcoders[key], meta["prompt"], edits, max_new_tokens=req.max_new_tokens,
                            top_k=req.top_k)
        return {**res.to_dict(), "graph": name, "mode": req.mode}

    return r


SCORES = ("replacement_score", "completeness_score", "max_logit_error", "seconds")


def facts_html(graph: dict) -> str:
    """One line: sizes, the pruning threshold, and the scores a graph records (metadata or metadata.info)."""
    meta = graph["metadata"]
    info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
    parts = [f"{len(meta['prompt_tokens'])} tokens", f"{len(graph['nodes'])} nodes", f"{len(graph['links'])} links"]
    if isinstance(meta.get("node_threshold"), (int, float)):
        parts.append(f"pruned at node threshold {meta['node_threshold']:g}")
    for k in SCORES:
        v = meta.get(k, info.get(k))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{k.replace('_', ' ')} {v:.3g}")
    for k in ("scan",):
        if isinstance(meta.get(k), str) and meta[k]:
            parts.append(f"model {escape(meta[k])}")
    return f"<p class=\"muted\" id=\"graph-facts\">{' · '.join(parts)}</p>"


def view_html() -> str:
    """The controls and panels that static/graph.js fills (templates/graph_view.html)."""
    from importlib import resources

    return resources.files("saescope.server").joinpath("templates", "graph_view.html").read_text(encoding="utf-8")
