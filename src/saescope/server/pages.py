"""The HTML pages of the web app (``router(state, forms)``) and the forms on them; ``static/app.js`` runs them.

    GET /                 index: read (heat-coloured text), feature table (search, sort, dense filter), steering,
                          attribution
    GET /feature/{id}     a feature page (404 page when out of range), with steering prefilled for the feature
    GET /favicon.ico      the app's icon (SVG)
    (the attribution-graph pages, /graphs and /graph/{name}, are in graphs.py)
"""
from __future__ import annotations

from html import escape


def router(st, forms):
    from fastapi import APIRouter
    from fastapi.responses import HTMLResponse, Response

    from ..report import html

    r = APIRouter()
    cfg, meta, sae = st.cfg, st.meta, st.sae

    def page(title: str, body: str, status: int = 200) -> HTMLResponse:
        scripts = f"<script>{html.asset('index.js')}</script>" if 'id="features-data"' in body else ""
        scripts += "<script src=\"/static/app.js\"></script>"
        return HTMLResponse(html.page(title, body, html.header("/", meta), scripts), status_code=status)

    @r.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(html.FAVICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @r.get("/", response_class=HTMLResponse)
    def index():
        note = "" if st.has_stats else ("<p class=\"note\">No feature statistics for this SAE: build them with "
                                        "<code>saescope dashboard</code> and pass <code>--store</code>.</p>")
        graphs = getattr(st, "graphs", None)
        n_graphs = len(graphs.listing()) if graphs is not None else 0
        if n_graphs:
            note += f"<p><a id=\"graphs-link\" href=\"/graphs\">{n_graphs} attribution graph{'s' * (n_graphs > 1)}</a></p>"
        body = html.index_body(st.summaries(), meta, "/feature/{id}",
                               extra=note + read_panel(cfg) + steer_panel(cfg) + attribute_panel(cfg),
                               explanations=st.explanation_summaries(), search_url="/api/search",
                               dense_density=cfg.dense_density, has_stats=st.has_stats)
        return page(f"saescope · {meta.get('hook')}", body)

    @r.get("/feature/{index}", response_class=HTMLResponse)
    def feature_page(index: int):
        if not 0 <= index < sae.d_sae:
            return page("not found", f"<h1>No feature {index}</h1><p>This SAE has {sae.d_sae} features "
                                     f"(0..{sae.d_sae - 1}). <a href=\"/\">Back to the index</a></p>", status=404)
        rec = st.record(index)
        body = html.feature_body(rec, meta, st.store.hist_edges if st.has_stats else [], link=lambda i: f"/feature/{i}",
                                 n_tokens=st.store.n_tokens if st.has_stats else None, has_stats=st.has_stats,
                                 explanations=st.explanations(index), nearest=st.nearest(index),
                                 dense_density=cfg.dense_density)
        strength = rec.max if st.has_stats and isinstance(rec.max, (int, float)) else 1.0
        body += steer_panel(cfg, feature=index, strength=round(max(strength, 1.0) * 4, 2))
        return page(f"Feature {index}" + (f" · {rec.label}" if rec.label else ""), body)

    return r


def read_panel(cfg) -> str:
    return ("<h2>Read a text</h2><form id=\"read-form\"><textarea id=\"read-text\" rows=\"3\" "
            f"maxlength=\"{cfg.max_text_chars}\" placeholder=\"type text: every token coloured by its features\">"
            "</textarea><p>top <input id=\"read-top\" type=\"number\" min=\"1\" "
            f"max=\"{cfg.max_top_k}\" value=\"5\" class=\"w4\"> colour by feature <input id=\"read-feature\" "
            "type=\"number\" min=\"0\" class=\"w6\" placeholder=\"top\" title=\"empty: each token's top feature\"> "
            "<button id=\"read-go\" type=\"submit\">Read</button> <span id=\"read-err\" class=\"err\"></span></p>"
            "</form><div id=\"read-out\"></div>")


def steer_panel(cfg, feature: int | None = None, strength: float = 8.0) -> str:
    row = ("<div class=\"steer-row\"><label>feature <input class=\"steer-feature w6\" type=\"number\" min=\"0\" "
           f"value=\"{'' if feature is None else int(feature)}\"></label> <label>strength <input class=\"steer-strength "
           f"w6\" value=\"{strength:g}\"></label> <button type=\"button\" class=\"steer-remove link\" "
           "title=\"remove this feature\">remove</button></div>")
    return ("<h2>Steering</h2><form id=\"steer-form\"><p><label for=\"steer-prompt\">prompt</label><br>"
            f"<textarea id=\"steer-prompt\" rows=\"2\" maxlength=\"{cfg.max_text_chars}\">The</textarea></p>"
            f"<div id=\"steer-rows\">{row}</div><p><button type=\"button\" id=\"steer-add\" class=\"link\">+ feature"
            "</button></p><p class=\"opts\"><label>method <select id=\"steer-method\"><option>add</option><option>"
            "clamp</option><option>scale</option><option>ablate</option></select></label> <label>positions <select "
            "id=\"steer-positions\"><option value=\"all\">all</option><option value=\"prompt\">prompt</option>"
            "<option value=\"generated\">generated</option><option value=\"from\">from N</option><option value=\"at\">"
            "at N</option></select></label> <input id=\"steer-pos-n\" type=\"number\" min=\"0\" value=\"1\" "
            "class=\"w4\" title=\"N (position 0 is the first token, BOS when the SAE uses one)\"> "
            f"<label>tokens <input id=\"steer-max\" type=\"number\" min=\"1\" max=\"{cfg.max_new_tokens}\" value=\"24\" "
            "class=\"w4\"></label> <label>temperature <input id=\"steer-temp\" class=\"w4\" value=\"0.7\"></label> "
            "<label>top-p <input id=\"steer-top-p\" class=\"w4\" value=\"0.9\"></label> <label>seed <input "
            "id=\"steer-seed\" type=\"number\" min=\"0\" value=\"0\" class=\"w6\"></label> <label>samples <input "
            f"id=\"steer-n\" type=\"number\" min=\"1\" max=\"{cfg.max_samples}\" value=\"3\" class=\"w4\"></label> "
            "<button id=\"steer-go\" type=\"submit\">Steer</button> <span id=\"steer-err\" class=\"err\"></span></p>"
            "</form><div id=\"steer-out\"></div>")


def attribute_panel(cfg) -> str:
    return ("<h2>Attribution</h2><form id=\"attr-form\"><p><input id=\"attr-text\" size=\"48\" "
            f"maxlength=\"{cfg.max_text_chars}\" placeholder=\"text whose next token is explained\" "
            f"value=\"{escape('The cat sat on the')}\"> <label>next token <input id=\"attr-target\" size=\"10\" "
            "placeholder=\"top prediction\" title=\"one token; mind the leading space\"></label> "
            "<select id=\"attr-method\"><option value=\"dla\">direct logit attribution</option><option "
            "value=\"gradient\">gradient (activation × gradient)</option></select> "
            "<button id=\"attr-go\" type=\"submit\">Attribute</button> <span id=\"attr-err\" class=\"err\"></span>"
            "</p></form><div id=\"attr-out\"></div>")
