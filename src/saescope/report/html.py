"""HTML pieces shared by the static dashboards and the local server: highlighted contexts, an SVG histogram,
logit tables, a feature page body and the feature index. Plain strings, every value escaped."""
from __future__ import annotations

import json
import math
import re
from html import escape
from importlib import resources
from typing import Callable

from .records import Example, FeatureRecord

NEURONPEDIA = "https://www.neuronpedia.org"


def asset(name: str) -> str:
    """Text of a file in ``saescope/report/templates``."""
    return resources.files("saescope.report").joinpath("templates", name).read_text(encoding="utf-8")


def page(title: str, body: str, header: str = "", scripts: str = "") -> str:
    """A complete self-contained HTML document (CSS inline). Lone surrogates (from a hostile label or token)
    become U+FFFD, so the page can always be encoded as UTF-8."""
    doc = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{escape(title)}</title>"
           f"<style>{asset('style.css')}</style></head><body>{header}<main>{body}</main>{scripts}</body></html>\n")
    return _SURROGATES.sub("\ufffd", doc)


_SURROGATES = re.compile("[\ud800-\udfff]")
# Inside <script>, "</script", "<!--" and "<script" change how the HTML parser reads the rest of the page;
# JSON with <, > and & as \u escapes contains none of them (and U+2028/9 are escaped by ensure_ascii).
_JSON_IN_HTML = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}


def json_for_html(obj) -> str:
    """``obj`` as compact JSON safe to embed in a ``<script>`` element or an HTML attribute: ``<``, ``>``,
    ``&`` escaped as ``\\u003c``..., non-finite numbers as ``null`` (``JSON.parse`` rejects ``NaN``/``Infinity``)."""
    return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False).translate(_JSON_IN_HTML)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def show_token(s: str) -> str:
    """A token as displayed: newlines and tabs made visible, escaped."""
    return escape(str(s).replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍"))


def _shade(a: float, vmax: float) -> str:
    x = 0.0 if vmax <= 0 else max(0.0, min(1.0, a / vmax))
    return f"rgba(230,110,20,{x * 0.85:.3f})" if x > 0 else "transparent"


def example_html(ex: Example, vmax: float | None = None) -> str:
    """One context, every token shaded by this feature's activation (title = value); the chosen token outlined."""
    vmax = vmax if vmax and vmax > 0 else max([ex.value, *ex.acts, 1e-9])
    spans = []
    for j, (tok, a) in enumerate(zip(ex.tokens, ex.acts)):
        cls = "tok c" if j == ex.center else "tok"
        spans.append(f"<span class=\"{cls}\" style=\"background:{_shade(a, vmax)}\" title=\"{a:.4g}\">{show_token(tok)}</span>")
    return f"<div class=\"ex\"><span class=\"muted\">{ex.value:.3f}</span>  {''.join(spans)}</div>"


def hist_svg(counts: list[int], edges: list[float], width: int = 460, height: int = 120) -> str:
    """Bar chart of histogram counts over log-spaced bins (log-scaled heights), as inline SVG."""
    if not counts or not any(counts):
        return "<p class=\"muted\">no activations</p>"
    n = len(counts)
    top = math.log1p(max(counts))
    bw = width / n
    bars = []
    for i, c in enumerate(counts):
        if not c:
            continue
        h = max(1.0, (height - 18) * math.log1p(c) / top)
        lo, hi = edges[i], edges[i + 1]
        bars.append(f"<rect x=\"{i * bw:.1f}\" y=\"{height - 16 - h:.1f}\" width=\"{max(bw - 1, 1):.1f}\" height=\"{h:.1f}\" "
                    f"fill=\"#e66e14\"><title>[{lo:.3g}, {hi:.3g}): {c}</title></rect>")
    axis = (f"<text x=\"0\" y=\"{height - 2}\" font-size=\"10\">{edges[0]:.0e}</text>"
            f"<text x=\"{width}\" y=\"{height - 2}\" font-size=\"10\" text-anchor=\"end\">{edges[-1]:.0e}</text>")
    return (f"<svg class=\"hist\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" "
            f"role=\"img\" aria-label=\"activation histogram\">{''.join(bars)}{axis}</svg>")


def logit_table(rows: list[tuple[str, float]], title: str) -> str:
    body = "".join(f"<tr><td><code>{show_token(s)}</code></td><td class=\"num\">{v:+.3f}</td></tr>" for s, v in rows)
    return f"<table class=\"logits\"><thead><tr><th>{escape(title)}</th><th></th></tr></thead><tbody>{body}</tbody></table>"


def neuronpedia_url(meta: dict, index: int) -> str | None:
    """``https://www.neuronpedia.org/<model>/<source>/<index>`` when the SAE's metadata names its Neuronpedia id."""
    np_id = meta.get("neuronpedia_id")
    return f"{NEURONPEDIA}/{np_id.strip('/')}/{index}" if np_id else None


def feature_body(rec: FeatureRecord, meta: dict, hist_edges: list[float], link: Callable[[int], str],
                 n_tokens: int | None = None) -> str:
    """The body of a feature page: stats, label, Neuronpedia link, contexts, intervals, histogram, logits, co-firing."""
    # every value from a store is escaped, numbers included: a hostile features.sqlite may hold text anywhere
    parts = [f"<h1>Feature {escape(str(rec.index))}"
             + (f" <span class=\"label\">{escape(str(rec.label))}</span>" if rec.label else "") + "</h1>"]
    url = neuronpedia_url(meta, rec.index)
    stats = [f"<span>density <b id=\"density\">{rec.density:.3e}</b></span>", f"<span>max <b id=\"maxact\">{rec.max:.4g}</b></span>",
             f"<span>mean <b>{rec.mean:.3e}</b></span>", f"<span>mean when active <b>{rec.mean_active:.4g}</b></span>"]
    if n_tokens:
        stats.append(f"<span class=\"muted\">{n_tokens:,} tokens</span>")
    parts.append(f"<p class=\"stats\">{''.join(stats)}</p>")
    if url:
        parts.append(f"<p><a href=\"{escape(url)}\" rel=\"noopener\">Neuronpedia</a></p>")
    hook = meta.get("hook")
    if hook:
        parts.append(f"<p class=\"muted\">{escape(str(meta.get('model') or ''))} · {escape(str(hook))}</p>")
    parts.append("<h2>Top activations</h2>")
    if rec.top:
        parts.append("".join(example_html(e, rec.max) for e in rec.top))
    else:
        parts.append("<p class=\"muted\">this feature never fired on the corpus</p>")
    if rec.intervals:
        parts.append("<h2>Activation intervals</h2>")
        for iv in rec.intervals:
            if iv["examples"]:
                parts.append(f"<p class=\"muted\">({iv['lo']:.3g}, {iv['hi']:.3g}]</p>")
                parts.append("".join(example_html(e, rec.max) for e in iv["examples"]))
    parts.append("<div class=\"cols\"><div><h2>Activation histogram</h2>" + hist_svg(rec.hist, hist_edges) + "</div>")
    if rec.pos_logits or rec.neg_logits:
        parts.append("<div><h2>Logit lens</h2><div class=\"cols\"><div>" + logit_table(rec.pos_logits, "promoted")
                     + "</div><div>" + logit_table(rec.neg_logits, "suppressed") + "</div></div></div>")
    parts.append("</div>")
    if rec.cofire:
        items = "".join(f"<li><a href=\"{escape(link(c['index']))}\">{escape(str(c['index']))}</a> "
                        f"<span class=\"muted\">Jaccard {c['jaccard']:.3f}, {escape(str(c['count']))} tokens</span></li>"
                        for c in rec.cofire)
        parts.append(f"<h2>Co-firing features</h2><ul class=\"cofire\">{items}</ul>")
    return "".join(parts)


def index_body(summaries, meta: dict, link_pattern: str, extra: str = "") -> str:
    """Feature index with search and sort; ``link_pattern`` contains ``{id}``. Needs ``index.js`` on the page."""
    rows = [[int(s.index), _number(s.density), _number(s.max), _number(s.mean),
             None if s.label is None else str(s.label)] for s in summaries]
    data = json_for_html(rows)
    title = escape(f"{meta.get('model') or ''} · {meta.get('hook') or ''}")
    info = f"{len(rows)} features"
    if meta.get("n_tokens"):
        info += f" · statistics over {int(meta['n_tokens']):,} tokens"
    return (f"<h1>{title}</h1><p class=\"muted\">{escape(info)}</p>{extra}"
            f"<h2>Features</h2><p><input id=\"q\" type=\"search\" placeholder=\"search label or index\" autocomplete=\"off\"> "
            f"<select id=\"sort\"><option value=\"index\">index</option><option value=\"label\">label</option>"
            f"<option value=\"density\">density</option><option value=\"max\">max activation</option>"
            f"<option value=\"mean\">mean activation</option></select> <span id=\"count\" class=\"muted\"></span></p>"
            f"<table id=\"features\" data-link=\"{escape(link_pattern)}\"><thead><tr><th data-sort=\"index\">#</th>"
            f"<th data-sort=\"label\">label</th><th data-sort=\"density\">density</th><th data-sort=\"max\">max</th>"
            f"<th data-sort=\"mean\">mean</th></tr></thead><tbody></tbody></table>"
            f"<p><button id=\"more\" type=\"button\">more</button></p>"
            f"<script type=\"application/json\" id=\"features-data\">{data}</script>")


def _number(x) -> float | None:
    """A statistic for the index: a finite float, or None (a hostile or overflowed store value)."""
    try:
        x = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return x if math.isfinite(x) else None


def header(home: str, meta: dict) -> str:
    sub = escape(" · ".join(str(x) for x in (meta.get("model"), meta.get("hook")) if x))
    return f"<header><a href=\"{escape(home)}\">saescope</a><span class=\"sub\">{sub}</span></header>"
