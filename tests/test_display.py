"""The HTML views of the result objects (``_repr_html_``, ``saescope.display``): well-formed, every string
escaped, the result's numbers present, no external resource, the only links Neuronpedia's."""
from __future__ import annotations

import dataclasses
import math
import re
from html.parser import HTMLParser

import pytest
import torch

from saescope.assets import TINY_DEFAULT_SAE, tiny_model_dir, tiny_sae_dir

pytestmark = pytest.mark.skipif(
    not (tiny_model_dir() / "model.safetensors").is_file() or not (tiny_sae_dir() / "cfg.json").is_file(),
    reason="the bundled tiny model or its default SAE is not built yet")

VOID = {"br"}
ALLOWED = {"div", "span", "table", "tr", "td", "th", "details", "summary", "b", "i", "code", "ul", "li", "br", "a",
           "style"}
HOSTILE = ['<!--<script>alert(1)</script>', '</div></table>"\'<b onmouseover=x>', '" onclick="x', "a&amp;b"]
NUM = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


class Page(HTMLParser):
    """Parses a fragment; fails on a mismatched or unclosed tag; keeps tags, attributes, text and comments."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags, self.data, self.comments, self.decls = [], [], [], [], []
        self.elements = []          # (tag, attrs dict, [text inside]) of every element, in document order
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags: {self.stack}"

    def handle_starttag(self, tag, attrs):
        el = (tag, dict(attrs), [])
        self.tags.append(tag)
        self.elements.append(el)
        if tag not in VOID:
            self.stack.append(el)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.elements.append((tag, dict(attrs), []))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1][0] == tag, f"</{tag}> closes {self.stack[-1][0] if self.stack else None}"
        self.stack.pop()

    def handle_data(self, data):
        self.data.append(data)
        for el in self.stack:
            el[2].append(data)

    def handle_comment(self, data):
        self.comments.append(data)

    def handle_decl(self, decl):
        self.decls.append(decl)

    def text_of(self, el) -> str:
        return "".join(el[2])

    def by_class(self, cls: str) -> list:
        return [el for el in self.elements if cls in (el[1].get("class") or "").split()]

    def cells(self) -> list[list[str]]:
        rows, row = [], None
        for tag, _, text in self.elements:
            if tag == "tr":
                row = []
                rows.append(row)
            elif tag in ("td", "th") and row is not None:
                row.append("".join(text))
        return rows


def parse(html: str) -> Page:
    page = Page(html)
    assert set(page.tags) <= ALLOWED, set(page.tags) - ALLOWED
    assert not page.comments and not page.decls
    return page


def has_number(text: str, value: float, rel: float = 1e-3) -> bool:
    return any(math.isclose(float(m), value, rel_tol=rel, abs_tol=1e-4) for m in NUM.findall(text))


def shown(token: str) -> str:
    """A token as the views draw it (documented in saescope.display): newlines and tabs visible."""
    return token.replace("\r", "␍").replace("\n", "⏎").replace("\t", "⇥")


@pytest.fixture(scope="module")
def tiny():
    from saescope.lm import LanguageModel
    from saescope.sae import SAE

    return LanguageModel.from_pretrained("tiny", device="cpu"), SAE.from_spec(f"tiny:{TINY_DEFAULT_SAE}")


TEXT = "The Emperor Napoleon\nrode out before the French army."


# ------------------------------------------------------------------------------------------ real results
def test_read_shows_every_token_and_its_top_features(tiny):
    from saescope.interp import read_features

    lm, sae = tiny
    [r] = read_features(lm, sae, TEXT, top_k=3)
    page = parse(r._repr_html_())
    spans = page.by_class("ssc-tok")
    assert [page.text_of(s) for s in spans] == [shown(t.token) for t in r.tokens]
    for span, row in zip(spans, r.tokens):
        title = span[1]["title"]
        assert f"pos {row.position}" in title and repr(row.token) in title
        for f in row.features:
            assert f"#{f.index} " in title
            assert has_number(title.split(f"#{f.index} ")[1], f.activation)
    table = page.cells()
    assert table[0] == ["pos", "token", "L0", "top features"]
    for cells, row in zip(table[1:], r.tokens):
        assert cells[0] == str(row.position) and cells[1] == shown(row.token) and cells[2] == str(row.l0)
        top = row.features[0]
        assert f"#{top.index} " in cells[3] and has_number(cells[3].split(f"#{top.index} ")[1], top.activation)
    assert len(table) == len(r.tokens) + 1
    head = page.by_class("ssc-h")[0]
    assert has_number(page.text_of(head), r.mean_l0) and has_number(page.text_of(head), r.percent_active)
    # colour: top activation / the largest one after BOS (a prepended BOS stays out of the scale)
    alphas = [float(s[1]["style"].split(",")[-1].rstrip(")")) for s in spans]
    tops = [row.features[0].activation for row in r.tokens]
    assert all(math.isclose(a, min(1.0, t / max(tops[1:])), abs_tol=0.006) for a, t in zip(alphas, tops))


def test_read_colour_scale_leaves_out_bos():
    from saescope.interp.read import FeatureActivation, ReadResult, TokenRow

    rows = [TokenRow(0, "<bos>", 0, [FeatureActivation(1, 100.0)], 1), TokenRow(1, "a", 5, [FeatureActivation(2, 2.0)], 1),
            TokenRow(2, "b", 6, [FeatureActivation(3, 4.0)], 1), TokenRow(3, "c", 7, [], 0)]
    for bos, want in ((True, [1.0, 0.5, 1.0, 0.0]), (False, [1.0, 0.02, 0.04, 0.0])):
        page = parse(ReadResult("abc", "h", rows, bos, 0.75, 1.0)._repr_html_())
        assert [float(s[1]["style"].split(",")[-1].rstrip(")")) for s in page.by_class("ssc-tok")] == want


def test_trace_and_token_stats_show_their_numbers(tiny):
    from saescope.interp import feature_trace, features_on_token, read_features

    lm, sae = tiny
    [row] = read_features(lm, sae, TEXT, top_k=1)
    feats = sorted({t.features[0].index for t in row.tokens[1:]})[:2]
    t = feature_trace(lm, sae, TEXT, feats)
    page = parse(t._repr_html_())
    table = page.cells()
    assert table[0] == ["pos", "token"] + [f"#{i}" for i in feats]
    for p, cells in enumerate(table[1:]):
        assert cells[1] == shown(t.tokens[p])
        for j in range(len(feats)):
            assert has_number(cells[2 + j], float(t.activations[p, j]))
    assert len(page.by_class("ssc-tok")) == len(feats) * len(t.tokens)

    s = features_on_token(lm, sae, [TEXT, "An army of the French."], " army", top_k=5)
    page = parse(s._repr_html_())
    assert s.occurrences == 2 and has_number(page.text_of(page.by_class("ssc-h")[0]), 2)
    for cells, f in zip(page.cells()[1:], s.features):
        assert cells[0] == f"#{f.index}" and has_number(cells[1], 100 * f.fraction)
        assert has_number(cells[2], f.mean_activation) and cells[3] == (f.label or "")


def test_steer_shows_prompt_both_continuations_and_interventions(tiny):
    from saescope.interp import Intervention, generate_steered

    lm, sae = tiny
    ivs = [Intervention(2169, "add", 15.52), Intervention.algebra("12-7", 3.0),
           Intervention((3, 4), "clamp", (1.5, 2.5), positions="generated"), Intervention(5, "ablate")]
    s = generate_steered(lm, sae, "He said that", ivs, max_new_tokens=12, seed=3)
    page = parse(s._repr_html_())
    boxes = [page.text_of(b) for b in page.by_class("ssc-box")]
    assert boxes == [s.prompt, s.baseline, s.steered]
    pair = page.by_class("ssc-pair")[0]
    assert page.text_of(pair).index("baseline") < page.text_of(pair).index("steered")
    items = [page.text_of(el) for el in page.elements if el[0] == "li"]
    assert items == ["add #2169 × 15.52", "algebra (+1×#12 -1×#7) × 3", "clamp #3 → 1.5, #4 → 2.5 at positions generated",
                     "ablate #5"]
    assert "seed 3" in page.text_of(page.by_class("ssc-m")[0])


@pytest.mark.parametrize("method", ["dla", "gradient"])
def test_attribution_shows_signed_bars_and_the_total(tiny, method):
    from saescope.interp import direct_logit_attribution, gradient_attribution

    lm, sae = tiny
    fn = direct_logit_attribution if method == "dla" else gradient_attribution
    a = fn(lm, sae, "The Emperor Napoleon rode out")
    page = parse(a._repr_html_())
    rows = page.cells()
    start = rows.index(["feature", "attribution", "activation"]) + 1
    bars = page.by_class("ssc-bar")
    assert len(bars) == min(12, len(a.features))
    vmax = max(abs(f.attribution) for f in a.features[:12])
    for cells, bar, f in zip(rows[start:], bars, a.features):
        assert cells[0].startswith(f"#{f.index}") and has_number(cells[1], f.attribution) and has_number(cells[2], f.activation)
        assert (cells[1].strip().startswith("+")) == (f.attribution >= 0)
        style = bar[1]["style"]
        assert ("#2a7ab9" in style) == (f.attribution >= 0)
        assert math.isclose(float(re.search(r"width:([\d.]+)px", style).group(1)), 100 * abs(f.attribution) / vmax, abs_tol=0.06)
    terms = dict((r[0], r[1]) for r in rows[rows.index(["term", "value"]) + 1:])
    assert has_number(terms["SAE error" if method == "dla" else "SAE error nodes"], a.error)
    if method == "dla":
        assert has_number(terms["rest of the residual"], a.rest) and has_number(terms["bias (decode(0))"], a.bias)
        assert has_number(terms["constant (biases)"], a.constant)
    line = page.text_of(page.by_class("ssc-h")[-1])
    assert has_number(line, a.total) and has_number(line, a.value) and has_number(line, a.residual)
    peaks = page.by_class("ssc-peak")
    assert len(peaks) == 1 and page.text_of(peaks[0]) == shown(a.tokens[a.position])


def test_feature_info_shows_lens_density_and_marked_contexts(tiny):
    from saescope.interp import feature_info
    from saescope.report.store import FeatureStore

    lm, sae = tiny
    store = FeatureStore.for_sae(sae, lm=lm)
    fi = feature_info(lm, sae, 2169, store=store)
    html = fi._repr_html_()
    page = parse(html)
    assert fi.label and fi.label in page.text_of(page.by_class("ssc-h")[0])
    assert not any(el[0] == "a" for el in page.elements) and fi.neuronpedia_url is None
    cells = page.cells()
    facts = {r[0]: r[1] for r in cells if len(r) == 2}
    assert has_number(facts["density"], fi.density) and has_number(facts["decoder norm"], fi.decoder_norm)
    assert fi.promoted and fi.suppressed
    for row in fi.promoted + fi.suppressed:
        assert any(c[0] == repr(row.token) and has_number(c[1], row.value) for c in cells if len(c) == 2), row
    assert fi.contexts
    peaks = page.by_class("ssc-peak")
    assert len(peaks) == len(fi.contexts)
    for peak, c in zip(peaks, fi.contexts):
        assert page.text_of(peak) == shown(c["tokens"][c["center"]]) and has_number(peak[1]["title"], c["acts"][c["center"]])


def test_eval_shows_the_metrics_table(tiny):
    from saescope.evals import evaluate_sae

    lm, sae = tiny
    e = evaluate_sae(lm, sae, [TEXT * 30], tokens=128, context_size=32, downstream=False)
    page = parse(e._repr_html_())
    metrics = {r[1]: r[2] for r in page.cells()[1:]}
    assert has_number(metrics["L0"], e.l0) and has_number(metrics["explained variance"], e.explained_variance)
    assert has_number(metrics["MSE"], e.mse) and has_number(metrics["dead fraction"], e.dead_fraction)
    assert metrics["CE loss recovered"] == "—" and metrics["KL score"] == "—"      # downstream=False: not computed
    e2 = dataclasses.replace(e, ce_loss_recovered=0.875, kl_score=0.5)
    metrics = {r[1]: r[2] for r in parse(e2._repr_html_()).cells()[1:]}
    assert metrics["CE loss recovered"] == "0.875" and metrics["KL score"] == "0.5"


# ------------------------------------------------------------------------------------------ hostile strings
def _hostile_results(tiny):
    from saescope.evals import evaluate_sae
    from saescope.interp import Attribution, FeatureInfo, Intervention, ReadResult, SteerResult, TokenScore, Trace
    from saescope.interp.attribute import FeatureAttribution
    from saescope.interp.read import FeatureActivation, TokenFeatureStat, TokenFeatureStats, TokenRow

    h = HOSTILE
    rows = [TokenRow(i, t, i, [FeatureActivation(7, 1.5, h[(i + 1) % 4])], 1) for i, t in enumerate(h)]
    lm, sae = tiny
    ev = evaluate_sae(lm, sae, [TEXT * 30], tokens=64, context_size=32, downstream=False)
    return [
        ReadResult(h[0], h[1], rows, True, 1.0, 0.1),
        Trace(h[2], h[3], list(h), [7], torch.ones(4, 1), {7: h[0]}),
        TokenFeatureStats(h[1], 3, 2, 1, [TokenFeatureStat(7, 0.5, 1.0, h[2])]),
        SteerResult(h[0], h[1], h[2], [Intervention(7, "add", 2.0)], h[3], 0, 1.0, 1.0, 4, [1], [2]),
        Attribution("dla", h[0], h[1], list(h), 2, h[3], 9, 1.0, [FeatureAttribution(7, 0.5, 1.0, None, h[0]),
                    FeatureAttribution(8, -0.25, 1.0, 1, h[1])], 0.1, total=1.0),
        FeatureInfo(7, h[0], h[1], "https://www.neuronpedia.org/x/" + h[2], [TokenScore(h[3], 1, 0.5)],
                    [TokenScore(h[0], 2, -0.5)], h[1], [{"tokens": list(h), "ids": [1, 2, 3, 4],
                    "acts": [0.0, 2.0, 1.0, 0.0], "center": 1, "value": 2.0}], None, 0.01, 1.0,
                    {"stats": {"density": 0.01, "max": 2.0}}),
        dataclasses.replace(ev, sae=h[0], model=h[1], hook=h[2]),
    ]


def test_hostile_strings_are_escaped_everywhere(tiny):
    expected = [range(4), range(4), (1, 2), range(4), range(4), range(4), range(3)]   # strings each result holds
    for result, held in zip(_hostile_results(tiny), expected):
        html = result._repr_html_()
        assert "<script" not in html.lower() and "<!--" not in html and "<b " not in html, type(result).__name__
        page = parse(html)          # no tag beyond the views' own, no comment, balanced
        texts = "".join(page.data) + "".join(v or "" for el in page.elements for v in el[1].values())
        for i in held:              # every string is shown, as text (the parser undoes the escaping); tokens may be repr()
            assert HOSTILE[i] in texts or repr(HOSTILE[i]) in texts, (type(result).__name__, HOSTILE[i])
        for el in page.elements:
            assert set(el[1]) <= {"class", "style", "title", "href", "target", "rel", "open"}, el   # no event handler


def test_only_neuronpedia_links_and_no_external_resources(tiny):
    from saescope.interp import FeatureInfo

    base = _hostile_results(tiny)[5]
    good = dataclasses.replace(base, neuronpedia_url="https://www.neuronpedia.org/gpt2-small/6-res-jb/123")
    page = parse(good._repr_html_())
    links = [el for el in page.elements if el[0] == "a"]
    assert [el[1]["href"] for el in links] == ["https://www.neuronpedia.org/gpt2-small/6-res-jb/123"]
    assert links[0][1]["rel"] == "noopener noreferrer"
    for bad in ("javascript:alert(1)", "https://evil.example/x", "https://www.neuronpedia.org.evil.example/x"):
        page = parse(dataclasses.replace(base, neuronpedia_url=bad)._repr_html_())
        assert not any(el[0] == "a" for el in page.elements), bad
    assert isinstance(good, FeatureInfo)
    for result in _hostile_results(tiny):
        html = result._repr_html_()
        page = parse(html)
        for el in page.elements:
            assert "src" not in el[1]
            assert "url(" not in (el[1].get("style") or "") and "@import" not in html
        for m in re.finditer(r"(?:https?:)?//[\w.-]+", html):
            assert m.group(0) == "https://www.neuronpedia.org", m.group(0)


def test_display_is_a_base_module():
    """interp and evals both call it, so it imports nothing of saescope (tests/test_architecture.py skips base modules)."""
    import ast

    import saescope.display as display

    tree = ast.parse(open(display.__file__, encoding="utf-8").read())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert all(m.split(".")[0] in ("html", "math", "__future__") for m in imported), imported
    from saescope.interp.feature import NEURONPEDIA
    assert NEURONPEDIA == display.NEURONPEDIA == "https://www.neuronpedia.org"
