"""HTML views of the result objects for Jupyter (their ``_repr_html_``): read, trace, token statistics, steering,
attribution, feature info and evaluation results.

Each view is one self-contained ``<div>``: an inline ``<style>`` (class names prefixed ``ssc``, so nothing
leaks into the page) plus ``style`` attributes for everything that carries meaning (colours, bar widths), so a
viewer that drops ``<style>`` still shows the numbers. No script, no CDN, no external resource. Every string
that comes from a result (tokens, labels, texts, hook names) goes through ``html.escape`` with quotes, in text
and in attributes alike. The only links are a feature's Neuronpedia page (``https://www.neuronpedia.org/...``).

A base module (like ``progress``): it imports nothing of saescope and reads the results by their attributes, so
``interp`` and ``evals`` both use it without crossing a layer.

Numbers are written with 4 significant digits (``fmt``); NaN (a metric that was not computed) as an em dash.
Tokens are shown as the result holds them, with newlines and tabs drawn as ``⏎`` and ``⇥``.
"""
from __future__ import annotations

import html
import math

NEURONPEDIA = "https://www.neuronpedia.org"     # feature pages: the only links the views make

MAX_TABLE_ROWS = 512            # read / trace tables: longer texts are cut (the token row still shows every token)
OPEN_TABLE_ROWS = 40            # tables up to this many rows start unfolded
TOP_BARS = 12                   # attribution: contributors drawn as bars

_CSS = """<style>
.ssc{font:13px/1.45 system-ui,-apple-system,sans-serif;margin:.3em 0}
.ssc-h{font-weight:600;margin-bottom:.3em}.ssc-m{opacity:.75;font-size:12px}
.ssc table{border-collapse:collapse;margin:.3em 0}.ssc td,.ssc th{padding:2px 6px;border:1px solid #8884;
text-align:left;vertical-align:top;font-size:12px}.ssc th{font-weight:600}
.ssc-t{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre}
.ssc-row{line-height:2.1;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap}
.ssc-tok{padding:1px 0;margin-right:1px;border-radius:3px;white-space:pre}
.ssc-peak{outline:2px solid #c0392b;font-weight:700}
.ssc-box{padding:.4em .6em;border:1px solid #8885;border-radius:6px;white-space:pre-wrap;overflow-wrap:anywhere}
.ssc-box .ssc-t{white-space:pre-wrap}
.ssc-pair{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:.6em;margin:.4em 0}
.ssc-bar{display:inline-block;height:.9em;vertical-align:middle}
</style>"""


def esc(value) -> str:
    """Escape any value for HTML text or a double-quoted attribute (``& < > " '``)."""
    return html.escape(str(value), quote=True)


def tok(token: str) -> str:
    """A token as shown: newlines and tabs visible, escaped."""
    return esc(str(token).replace("\r", "␍").replace("\n", "⏎").replace("\t", "⇥"))


def fmt(value) -> str:
    """A number with 4 significant digits; None or NaN (not computed) as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    value = float(value)
    return "—" if math.isnan(value) else f"{value:.4g}"


def _alpha(value: float, vmax: float) -> float:
    return 0.0 if vmax <= 0 or not value > 0 else min(1.0, value / vmax)


def span(text: str, value: float, vmax: float, title: str, peak: bool = False) -> str:
    """One token coloured by ``value / vmax`` (orange; negative values are not coloured), ``title`` on hover."""
    a = _alpha(value, vmax)
    cls = "ssc-tok ssc-peak" if peak else "ssc-tok"
    return f'<span class="{cls}" style="background:rgba(255,127,14,{a:.2f})" title="{esc(title)}">{tok(text)}</span>'


def table(headers: list[str], rows: list[list[str]]) -> str:
    """``headers`` are plain text (escaped here; all empty: no header row); ``rows`` are cells already in HTML."""
    head = f"<tr>{''.join(f'<th>{esc(h)}</th>' for h in headers)}</tr>" if any(headers) else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def fold(summary: str, body: str, rows: int) -> str:
    """``body`` in a ``<details>`` (open when it is short)."""
    return f"<details{' open' if rows <= OPEN_TABLE_ROWS else ''}><summary>{esc(summary)}</summary>{body}</details>"


def wrap(kind: str, body: str) -> str:
    return f'<div class="ssc ssc-{kind}">{_CSS}{body}</div>'


def _label(label) -> str:
    return f' <i class="ssc-m">{esc(label)}</i>' if label else ""


def _feature(index: int, value: float, label=None) -> str:
    return f"#{int(index)} <b>{fmt(value)}</b>{_label(label)}"


# --------------------------------------------------------------------------------------------- read.py
def render_read(r) -> str:
    """ReadResult: the tokens as a row coloured by their top activation (the top features on hover) and a table
    of position, token, L0 and top features. The colour scale leaves out a prepended BOS (its activations dwarf
    the text's)."""
    rows = r.tokens
    scale = rows[1:] if r.prepend_bos and len(rows) > 1 else rows
    vmax = max((t.features[0].activation for t in scale if t.features), default=0.0)
    spans = []
    for t in rows:
        top = t.features[0].activation if t.features else 0.0
        hover = [f"pos {t.position} · {t.token!r} · L0 {t.l0}"]
        hover += [f"#{f.index} {fmt(f.activation)}" + (f" {f.label}" if f.label else "") for f in t.features]
        spans.append(span(t.token, top, vmax, "\n".join(hover)))
    cells = [[str(t.position), f'<span class="ssc-t">{tok(t.token)}</span>', str(t.l0),
              "<br>".join(_feature(f.index, f.activation, f.label) for f in t.features) or "—"]
             for t in rows[:MAX_TABLE_ROWS]]
    cut = f" (first {MAX_TABLE_ROWS} of {len(rows)})" if len(rows) > MAX_TABLE_ROWS else ""
    head = (f'<div class="ssc-h">Features at <code>{esc(r.hook)}</code>: {len(rows)} tokens, mean L0 '
            f'{fmt(r.mean_l0)}, {fmt(r.percent_active)}% of features active</div>')
    return wrap("read", head + f'<div class="ssc-row">{"".join(spans)}</div>'
                + fold(f"top features per token{cut}", table(["pos", "token", "L0", "top features"], cells), len(cells)))


def render_trace(t) -> str:
    """Trace: one coloured token row per feature (its own scale) and a table of the activations."""
    acts = t.activations.detach().float().cpu().tolist()          # [pos][n]
    out = [f'<div class="ssc-h">Trace at <code>{esc(t.hook)}</code>: {len(t.features)} feature(s) on '
           f'{len(t.tokens)} tokens</div>']
    for j, index in enumerate(t.features):
        col = [row[j] for row in acts]
        vmax = max(col, default=0.0)
        spans = "".join(span(s, v, vmax, f"pos {p} · {s!r} · #{index} = {fmt(v)}")
                        for p, (s, v) in enumerate(zip(t.tokens, col)))
        out.append(f"<div>#{int(index)}{_label(t.labels.get(index))} <span class=\"ssc-m\">max {fmt(vmax)}</span>"
                   f'<div class="ssc-row">{spans}</div></div>')
    cells = [[str(p), f'<span class="ssc-t">{tok(s)}</span>'] + [fmt(v) for v in row]
             for p, (s, row) in enumerate(zip(t.tokens[:MAX_TABLE_ROWS], acts))]
    out.append(fold("activations", table(["pos", "token"] + [f"#{int(i)}" for i in t.features], cells), len(cells)))
    return wrap("trace", "".join(out))


def render_token_stats(s) -> str:
    """TokenFeatureStats: which features fire on one token, how often and how strongly."""
    head = (f'<div class="ssc-h">Features on token <span class="ssc-t">{tok(repr(s.token))}</span> (id {int(s.token_id)}):'
            f" {int(s.occurrences)} occurrence(s) in {int(s.texts)} text(s)</div>")
    if not s.features:
        return wrap("tokenstats", head + "<p>No feature fires on it (or it does not occur in the texts).</p>")
    rows = [[f"#{int(f.index)}", fmt(100.0 * f.fraction), fmt(f.mean_activation), esc(f.label or "")] for f in s.features]
    return wrap("tokenstats", head + table(["feature", "fires on %", "mean activation", "label"], rows))


# --------------------------------------------------------------------------------------------- steer.py
def _iv_text(iv) -> str:
    feats = [int(f) for f in iv.features]
    where = "" if iv.positions == "all" else f" at positions {iv.positions}"
    unit = " (unit-normalised direction)" if getattr(iv, "normalize", False) else ""
    if iv.method == "algebra":
        terms = " ".join(f"{'+' if w >= 0 else ''}{fmt(w)}×#{f}" for f, w in zip(feats, iv.weights or [1.0] * len(feats)))
        return f"algebra ({terms}) × {fmt(iv.strength)}{unit}{where}"
    if iv.method == "ablate":
        return f"ablate {', '.join(f'#{f}' for f in feats)}{where}"
    if iv.method == "clamp":
        values = iv.strength if isinstance(iv.strength, tuple) else (iv.strength,) * len(feats)
        return f"clamp {', '.join(f'#{f} → {fmt(v)}' for f, v in zip(feats, values))}{where}"
    verb = "add" if iv.method == "add" else "scale"
    return f"{verb} {', '.join(f'#{f}' for f in feats)} × {fmt(iv.strength)}{unit}{where}"


def render_steer(s) -> str:
    """SteerResult: the prompt set apart, baseline and steered continuations side by side, the interventions."""
    seed = "none" if s.seed is None else str(int(s.seed))
    head = (f'<div class="ssc-h">Steering at <code>{esc(s.hook)}</code></div><div class="ssc-m">seed {seed}, '
            f"temperature {fmt(s.temperature)}, top_p {fmt(s.top_p)}, up to {int(s.max_new_tokens)} new tokens</div>")
    base = (f'<span class="ssc-t">{esc(s.baseline)}</span>' if s.baseline or s.baseline_ids
            else '<i class="ssc-m">(no baseline generated)</i>')
    pair = (f'<div class="ssc-pair"><div><div class="ssc-m">baseline ({len(s.baseline_ids)} tokens)</div>'
            f'<div class="ssc-box">{base}</div></div><div><div class="ssc-m">steered ({len(s.steered_ids)} tokens)'
            f'</div><div class="ssc-box"><span class="ssc-t">{esc(s.steered)}</span></div></div></div>')
    ivs = "".join(f"<li>{esc(_iv_text(iv))}</li>" for iv in s.interventions)
    return wrap("steer", head + f'<div class="ssc-m">prompt</div><div class="ssc-box">{esc(s.prompt)}</div>'
                + pair + f"<div>Interventions:<ul>{ivs}</ul></div>")


# --------------------------------------------------------------------------------------------- attribute.py
def _bar(value: float, vmax: float) -> str:
    width = 0.0 if vmax <= 0 else 100.0 * abs(value) / vmax
    colour = "#2a7ab9" if value >= 0 else "#c0392b"
    return (f'<span class="ssc-bar" style="width:{width:.1f}px;background:{colour}"></span>'
            f" {'+' if value >= 0 else ''}{fmt(value)}")


def render_attribution(a, top: int = TOP_BARS) -> str:
    """Attribution: the tokens with the target position marked, a bar list of the top contributors (signed:
    blue pushes the target up, red down), and the terms that make up the total, with the residual."""
    title = "Direct logit attribution" if a.method == "dla" else "Gradient attribution"
    at = a.tokens[a.position] if 0 <= a.position < len(a.tokens) else None
    target = f" to the logit of <span class=\"ssc-t\">{tok(repr(a.target))}</span>" if a.target is not None else ""
    where = f" at position {int(a.position)}" + (f' (<span class="ssc-t">{tok(repr(at))}</span>)' if at is not None else "")
    head = f'<div class="ssc-h">{title}{target}{where}, features at <code>{esc(a.hook)}</code></div>'
    row = "".join(span(s, 0.0, 0.0, f"pos {p} · {s!r}", peak=p == a.position) for p, s in enumerate(a.tokens))
    shown = a.features[:top]
    vmax = max((abs(f.attribution) for f in shown), default=0.0)
    bars = []
    for f in shown:
        pos = "" if f.position is None else f" @{int(f.position)}"
        if f.position is not None and 0 <= f.position < len(a.tokens):
            pos += f' <span class="ssc-t">{tok(repr(a.tokens[f.position]))}</span>'
        bars.append([f"#{int(f.index)}{pos}{_label(f.label)}", _bar(f.attribution, vmax), fmt(f.activation)])
    feats_sum = sum(f.attribution for f in a.features)
    if a.method == "dla":
        terms = [("features (sum)", feats_sum), ("SAE error", a.error), ("bias (decode(0))", a.bias),
                 ("rest of the residual", a.rest), ("constant (biases)", a.constant)]
        check = f"total {fmt(a.total)} = model logit {fmt(a.value)}, residual {fmt(a.residual)}"
    else:
        terms = [("feature nodes (sum)", feats_sum), ("SAE error nodes", a.error)]
        check = (f"total (first order) {fmt(a.total)}; metric {fmt(a.value)}; "
                 f"residual (total − metric) {fmt(a.residual)}")
    term_rows = [[esc(name), fmt(v)] for name, v in terms]
    return wrap("attribution", head + f'<div class="ssc-row">{row}</div>'
                + f'<div class="ssc-m">top {len(shown)} of {len(a.features)} nodes by |attribution|</div>'
                + table(["feature", "attribution", "activation"], bars)
                + table(["term", "value"], term_rows) + f'<div class="ssc-h">{esc(check)}</div>')


# --------------------------------------------------------------------------------------------- feature.py
def neuronpedia_link(url) -> str:
    """A link only for a Neuronpedia page; anything else is shown as text."""
    if not url:
        return '<span class="ssc-m">no Neuronpedia page (the SAE\'s metadata has no neuronpedia_id)</span>'
    if not str(url).startswith(NEURONPEDIA + "/"):
        return f'<span class="ssc-t">{esc(url)}</span>'
    return f'<a href="{esc(url)}" target="_blank" rel="noopener noreferrer">{esc(url)}</a>'


def _context(c: dict) -> str:
    tokens, acts, center = c.get("tokens") or [], c.get("acts") or [], c.get("center")
    if len(tokens) != len(acts):
        return f'<i class="ssc-m">(a malformed context: {len(tokens)} tokens, {len(acts)} activations)</i>'
    vmax = max(acts, default=0.0)
    spans = "".join(span(s, float(v), vmax, f"{s!r} = {fmt(v)}", peak=i == center)
                    for i, (s, v) in enumerate(zip(tokens, acts)))
    return f'<b>{fmt(c.get("value"))}</b> <span class="ssc-row">{spans}</span>'


def render_feature_info(fi) -> str:
    """FeatureInfo: label, Neuronpedia link, density, logit lens, top contexts with the peak token marked."""
    head = f'<div class="ssc-h">Feature #{int(fi.index)} at <code>{esc(fi.hook)}</code>{_label(fi.label)}</div>'
    density = "unknown" if fi.density is None else f"{fmt(fi.density)} (fires on {fmt(100.0 * fi.density)}% of tokens)"
    stats = fi.extra.get("stats") or {}
    facts = [["Neuronpedia", neuronpedia_link(fi.neuronpedia_url)], ["density", esc(density)],
             ["decoder norm", fmt(fi.decoder_norm)]]
    facts += [[esc(k.replace("_", " ")), fmt(v)] for k, v in stats.items() if k != "density"]
    out = [head, table(["", ""], facts)]
    if fi.promoted or fi.suppressed:
        lens = lambda rows: table(["token", "logit"], [[f'<span class="ssc-t">{tok(repr(r.token))}</span>', fmt(r.value)]  # noqa: E731
                                                        for r in rows])
        out.append(f'<div class="ssc-pair"><div><div class="ssc-m">promoted</div>{lens(fi.promoted)}</div>'
                   f'<div><div class="ssc-m">suppressed</div>{lens(fi.suppressed)}</div></div>')
    if fi.logit_lens_note:
        out.append(f'<div class="ssc-m">{esc(fi.logit_lens_note)}</div>')
    if fi.contexts:
        out.append('<div class="ssc-m">top contexts (peak token outlined)</div>'
                   + "".join(f"<div>{_context(c)}</div>" for c in fi.contexts))
    elif fi.contexts_note:
        out.append(f'<div class="ssc-m">{esc(fi.contexts_note)}</div>')
    return wrap("feature", "".join(out))


# --------------------------------------------------------------------------------------------- evals
_EVAL_ROWS = (
    ("sparsity", [("L0", "l0"), ("L1", "l1"), ("dead fraction", "dead_fraction"),
                  ("dense fraction (> 1%)", "dense_fraction_1pct"), ("dense fraction (> 10%)", "dense_fraction_10pct")]),
    ("reconstruction", [("explained variance", "explained_variance"), ("FVU", "fvu"), ("MSE", "mse"),
                        ("SSE per token", "sse_per_token"), ("cosine similarity", "cosine_similarity"),
                        ("L2 ratio", "l2_ratio"), ("relative reconstruction bias", "relative_reconstruction_bias")]),
    ("downstream", [("CE loss, clean", "ce_loss_clean"), ("CE loss, SAE spliced in", "ce_loss_sae"),
                    ("CE loss, zero ablation", "ce_loss_zero_ablation"),
                    ("CE loss, mean ablation", "ce_loss_mean_ablation"), ("CE loss recovered", "ce_loss_recovered"),
                    ("CE loss recovered (mean ablation)", "ce_loss_recovered_mean_ablation"),
                    ("KL, SAE spliced in", "kl_sae"), ("KL, zero ablation", "kl_zero_ablation"),
                    ("KL, mean ablation", "kl_mean_ablation"), ("KL score", "kl_score"),
                    ("KL score (mean ablation)", "kl_score_mean_ablation")]),
)


def render_eval(e) -> str:
    """EvalResult: the metrics table (downstream rows show — when they were not computed)."""
    head = (f'<div class="ssc-h">Evaluation of {esc(e.sae)} on {esc(e.model)} at <code>{esc(e.hook)}</code></div>'
            f'<div class="ssc-m">{int(e.tokens)} tokens in {int(e.contexts)} contexts of {int(e.context_size)}'
            f'{", BOS/special tokens excluded" if e.exclude_bos else ""}; d_sae {int(e.d_sae)}; '
            f"{fmt(e.seconds)} s</div>")
    rows = [[esc(group) if j == 0 else "", esc(name), fmt(getattr(e, key))]
            for group, items in _EVAL_ROWS for j, (name, key) in enumerate(items)]
    return wrap("eval", head + table(["", "metric", "value"], rows))


__all__ = ["esc", "fmt", "render_attribution", "render_eval", "render_feature_info", "render_read", "render_steer",
           "render_token_stats", "render_trace", "tok"]
