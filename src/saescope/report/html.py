"""HTML pieces shared by the static dashboards and the local server: highlighted contexts, an SVG histogram,
logit tables, a feature page body and the feature index. Plain strings, every value escaped."""
from __future__ import annotations

import base64
import json
import math
import re
from html import escape
from importlib import resources
from typing import Callable

from .records import Example, FeatureRecord

NEURONPEDIA = "https://www.neuronpedia.org"
# the app's icon (also served as /favicon.ico): an orange bar chart on dark blue, 16x16
FAVICON_SVG = ("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'><rect width='16' height='16' rx='3' "
               "fill='#1d2330'/><rect x='3' y='8' width='2' height='5' fill='#e66e14'/><rect x='7' y='4' width='2' "
               "height='9' fill='#e66e14'/><rect x='11' y='6' width='2' height='7' fill='#e66e14'/></svg>")
_FAVICON_B64 = base64.b64encode(FAVICON_SVG.encode()).decode()       # inline: pages fetch nothing


def asset(name: str) -> str:
    """Text of a file in ``saescope/report/templates``."""
    return resources.files("saescope.report").joinpath("templates", name).read_text(encoding="utf-8")


def page(title: str, body: str, header: str = "", scripts: str = "") -> str:
    """A complete self-contained HTML document (CSS inline). Lone surrogates (from a hostile label or token)
    become U+FFFD, so the page can always be encoded as UTF-8."""
    doc = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{escape(title)}</title>"
           f"<link rel=\"icon\" href=\"data:image/svg+xml;base64,{_FAVICON_B64}\">"
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


def _nice_step(span: float, n: int) -> float:
    """A 1/2/5 x 10^k step giving about ``n`` ticks over ``span``."""
    raw = span / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Three to about twelve tick values between ``lo`` and ``hi`` (> 0) on a log axis: powers of ten, else 1-2-5,
    else every digit, else the two ends and their geometric middle."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mults in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0 ** e for e in range(a, b + 1) for m in mults]
        ticks = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if 3 <= len(ticks) <= 12:
            return ticks
    return [float(f"{v:.2g}") for v in (lo * 1.0001, math.sqrt(lo * hi), hi * 0.9999)]


def _fmt_tick(v: float) -> str:
    return f"{v:g}" if 1e-3 <= abs(v) < 1e5 or v == 0 else f"{v:.0e}"


def hist_svg(counts: list[int], edges: list[float], width: int = 560, height: int = 220) -> str:
    """Bar chart of activation counts over log-spaced bins, as inline SVG with axes: y = tokens (linear, with
    ticks), x = activation on a log scale, zoomed to the bins from the first to the last non-empty one."""
    try:
        counts = [max(0, int(c)) for c in counts]
        edges = [float(e) for e in edges]
    except (TypeError, ValueError, OverflowError):
        return "<p class=\"muted\">no histogram</p>"
    if not counts or not any(counts) or len(edges) != len(counts) + 1 or not all(
            math.isfinite(e) and e > 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        return "<p class=\"muted\">no activations</p>"
    nz = [i for i, c in enumerate(counts) if c]
    first, last = nz[0], nz[-1]
    counts, edges = counts[first:last + 1], edges[first:last + 2]
    left, right, top, bottom = 52, 10, 10, 40
    pw, ph = width - left - right, height - top - bottom
    lx0, lx1 = math.log10(edges[0]), math.log10(edges[-1])
    x = lambda v: left + pw * (math.log10(v) - lx0) / (lx1 - lx0)   # noqa: E731
    step = _nice_step(max(counts), 4)
    ymax = step * math.ceil(max(counts) / step)
    y = lambda c: top + ph * (1 - c / ymax)                         # noqa: E731
    out = []
    for k in range(int(round(ymax / step)) + 1):
        v = k * step
        out.append(f"<line x1=\"{left}\" x2=\"{left + pw}\" y1=\"{y(v):.1f}\" y2=\"{y(v):.1f}\" stroke=\"#e3e6eb\"/>"
                   f"<text x=\"{left - 5}\" y=\"{y(v) + 3.5:.1f}\" text-anchor=\"end\">{v:,.0f}</text>")
    for i, c in enumerate(counts):
        if c:
            x0, x1 = x(edges[i]), x(edges[i + 1])
            out.append(f"<rect x=\"{x0 + 0.5:.1f}\" y=\"{y(c):.1f}\" width=\"{max(x1 - x0 - 1, 1):.1f}\" "
                       f"height=\"{max(y(0) - y(c), 1):.1f}\" fill=\"#e66e14\"><title>{edges[i]:.3g} to "
                       f"{edges[i + 1]:.3g}: {c:,} tokens</title></rect>")
    for t in _log_ticks(edges[0], edges[-1]):
        out.append(f"<line x1=\"{x(t):.1f}\" x2=\"{x(t):.1f}\" y1=\"{top + ph}\" y2=\"{top + ph + 4}\" stroke=\"#555\"/>"
                   f"<text class=\"xt\" x=\"{x(t):.1f}\" y=\"{top + ph + 15}\" text-anchor=\"middle\">{_fmt_tick(t)}</text>")
    out.append(f"<line x1=\"{left}\" x2=\"{left + pw}\" y1=\"{top + ph}\" y2=\"{top + ph}\" stroke=\"#555\"/>"
               f"<line x1=\"{left}\" x2=\"{left}\" y1=\"{top}\" y2=\"{top + ph}\" stroke=\"#555\"/>"
               f"<text x=\"{left + pw / 2:.0f}\" y=\"{height - 4}\" text-anchor=\"middle\">activation (log scale)</text>"
               f"<text x=\"12\" y=\"{top + ph / 2:.0f}\" text-anchor=\"middle\" "
               f"transform=\"rotate(-90 12 {top + ph / 2:.0f})\">tokens</text>")
    return (f"<svg class=\"hist\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" "
            f"font-size=\"10\" role=\"img\" aria-label=\"activation histogram\">{''.join(out)}</svg>")


def logit_table(rows: list[tuple[str, float]], title: str) -> str:
    body = "".join(f"<tr><td><code>{show_token(s)}</code></td><td class=\"num\">{v:+.3f}</td></tr>" for s, v in rows)
    return f"<table class=\"logits\"><thead><tr><th>{escape(title)}</th><th></th></tr></thead><tbody>{body}</tbody></table>"


def neuronpedia_url(meta: dict, index: int) -> str | None:
    """``https://www.neuronpedia.org/<model>/<source>/<index>`` when the SAE's metadata names its Neuronpedia id."""
    np_id = meta.get("neuronpedia_id")
    return f"{NEURONPEDIA}/{np_id.strip('/')}/{index}" if np_id else None


def label_html(label) -> str:
    """An automatic label, marked "auto" (labels.json holds n-gram labels, not explanations)."""
    if not label:
        return ""
    return f"<span class=\"label\">{escape(str(label))}</span> <span class=\"tag\" title=\"automatic label\">auto</span>"


def explanation_html(explanations: list[dict]) -> str:
    """The newest explanation with its model and scores; older ones folded away."""
    if not explanations:
        return ""

    def one(e: dict) -> str:
        scores = []
        for sc in e.get("scores") or []:
            for metric, v in (sc.get("metrics") or {}).items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    scores.append(f"{escape(str(sc.get('scorer')))} {escape(str(metric).replace('_', ' '))} "
                                  f"<b>{v:.2f}</b>")
        return (f"<p class=\"expl\"><span class=\"expl-text\">{escape(str(e.get('explanation') or ''))}</span> "
                f"<span class=\"muted\">· {escape(str(e.get('model') or ''))}"
                + (" · " + ", ".join(scores) if scores else " · not scored") + "</span></p>")
    older = "".join(one(e) for e in explanations[1:])
    return ("<div id=\"explanation\">" + one(explanations[0])
            + (f"<details><summary>{len(explanations) - 1} older</summary>{older}</details>" if older else "") + "</div>")


def nearest_html(nearest: list[dict], link: Callable[[int], str]) -> str:
    """Nearest features by decoder cosine: ``[{"index", "cosine", "label"?}]``."""
    if not nearest:
        return ""
    items = "".join(f"<li><a href=\"{escape(link(int(n['index'])))}\">{int(n['index'])}</a> "
                    f"<span class=\"num\">{float(n['cosine']):.3f}</span>"
                    + (f" <span class=\"label\">{escape(str(n['label']))}</span>" if n.get("label") else "") + "</li>"
                    for n in nearest)
    return f"<div id=\"nearest\"><h2>Nearest features <span class=\"muted\">(decoder cosine)</span></h2><ol>{items}</ol></div>"


def feature_body(rec: FeatureRecord, meta: dict, hist_edges: list[float], link: Callable[[int], str],
                 n_tokens: int | None = None, *, has_stats: bool = True, explanations: list[dict] = (),
                 nearest: list[dict] = (), dense_density: float = 0.01) -> str:
    """The body of a feature page: label, explanation, stats (with a mark on dense features), Neuronpedia link,
    contexts, intervals, histogram, logit lens, nearest features, co-firing. ``has_stats=False`` (a server
    without a feature store): says so, and shows what is known without statistics."""
    # every value from a store is escaped, numbers included: a hostile features.sqlite may hold text anywhere
    dense = has_stats and isinstance(rec.density, (int, float)) and rec.density > dense_density
    badge = (f" <span class=\"badge dense\" title=\"active on more than {dense_density:.0%} of tokens\">dense</span>"
             if dense else "")
    parts = [f"<h1>Feature {escape(str(rec.index))} {label_html(rec.label)}{badge}</h1>", explanation_html(list(explanations))]
    url = neuronpedia_url(meta, rec.index)
    if has_stats:
        stats = [f"<span>density <b id=\"density\">{rec.density:.3e}</b></span>",
                 f"<span>max <b id=\"maxact\">{rec.max:.4g}</b></span>", f"<span>mean <b>{rec.mean:.3e}</b></span>",
                 f"<span>mean when active <b>{rec.mean_active:.4g}</b></span>"]
        if n_tokens:
            stats.append(f"<span class=\"muted\">{n_tokens:,} tokens</span>")
        parts.append(f"<p class=\"stats\">{''.join(stats)}</p>")
    else:
        parts.append("<p id=\"no-stats\" class=\"note\">No feature statistics were built for this SAE, so its "
                     "activations on a corpus (top examples, density, histogram) are not known here. Shown: what "
                     "follows from the weights alone. Build statistics with <code>saescope dashboard</code>.</p>")
    if url:
        parts.append(f"<p><a href=\"{escape(url)}\" rel=\"noopener\">Neuronpedia</a></p>")
    hook = meta.get("hook")
    if hook:
        parts.append(f"<p class=\"muted\">{escape(str(meta.get('model') or ''))} · {escape(str(hook))}</p>")
    if has_stats:
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
    parts.append("<div class=\"cols\">")
    if has_stats:
        parts.append("<div><h2>Activation histogram</h2>" + hist_svg(rec.hist, hist_edges) + "</div>")
    if rec.pos_logits or rec.neg_logits:
        parts.append("<div><h2>Logit lens</h2><div class=\"cols\"><div>" + logit_table(rec.pos_logits, "promoted")
                     + "</div><div>" + logit_table(rec.neg_logits, "suppressed") + "</div></div></div>")
    parts.append("</div>" + nearest_html(list(nearest), link))
    if rec.cofire:
        items = "".join(f"<li><a href=\"{escape(link(c['index']))}\">{escape(str(c['index']))}</a> "
                        f"<span class=\"muted\">Jaccard {c['jaccard']:.3f}, {escape(str(c['count']))} tokens</span></li>"
                        for c in rec.cofire)
        parts.append(f"<h2>Co-firing features</h2><ul class=\"cofire\">{items}</ul>")
    return "".join(parts)


def index_body(summaries, meta: dict, link_pattern: str, extra: str = "", *, explanations: dict[int, dict] | None = None,
               search_url: str | None = None, dense_density: float = 0.01, has_stats: bool = True) -> str:
    """Feature index with search, sort and a dense-feature filter; ``link_pattern`` contains ``{id}``. Needs
    ``index.js`` on the page. ``explanations``: ``{feature: explanation_summary}``. ``search_url`` (the server's
    ``/api/search``): the search box asks it (explanations, labels, logit lens); without it, or when it fails, the
    box filters labels and explanations on the page."""
    explanations = explanations or {}
    rows = []
    for s in summaries:
        e = explanations.get(int(s.index)) or {}
        stats = [_number(v) if has_stats else None for v in (s.density, s.max, s.mean)]
        rows.append([int(s.index), *stats, None if s.label is None else str(s.label),
                     None if e.get("explanation") is None else str(e["explanation"]), _number(e.get("score")),
                     None if e.get("model") is None else str(e["model"])])
    data = json_for_html(rows)
    title = escape(f"{meta.get('model') or ''} · {meta.get('hook') or ''}")
    info = f"{len(rows)} features"
    if meta.get("n_tokens"):
        info += f" · statistics over {int(meta['n_tokens']):,} tokens"
    n_expl = sum(1 for r in rows if r[5])
    if n_expl:
        info += f" · {n_expl} explained"
    search = f" data-search=\"{escape(search_url)}\"" if search_url else ""
    dense = (f"<label title=\"features active on more than {dense_density:.0%} of tokens\"><input id=\"hide-dense\" "
             f"type=\"checkbox\"> hide dense (&gt; {dense_density:.0%})</label> " if has_stats else "")
    return (f"<h1>{title}</h1><p class=\"muted\">{escape(info)}</p>{extra}"
            f"<h2>Features</h2><p><input id=\"q\" type=\"search\" size=\"32\" placeholder=\"search explanations, labels, "
            f"logit lens or #index\" autocomplete=\"off\"> "
            f"<select id=\"sort\"><option value=\"index\">index</option><option value=\"label\">label</option>"
            f"<option value=\"score\">explanation score</option>"
            f"<option value=\"density\">density</option><option value=\"max\">max activation</option>"
            f"<option value=\"mean\">mean activation</option></select> {dense}<span id=\"count\" class=\"muted\"></span></p>"
            f"<table id=\"features\" data-link=\"{escape(link_pattern)}\" data-dense=\"{dense_density!r}\"{search}>"
            f"<thead><tr><th data-sort=\"index\">#</th>"
            f"<th data-sort=\"label\">label / explanation</th><th data-sort=\"score\">score</th>"
            f"<th data-sort=\"density\">density</th><th data-sort=\"max\">max</th>"
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
