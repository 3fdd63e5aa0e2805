"""What the browser shows besides a store's records: token display strings (split characters merged), nearest
features by decoder cosine, the logit-lens search ("God" on the bundled SAE), the histogram's axes, explanations
and the dense mark on pages, the index and static dashboards."""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
import torch

from report_helpers import EXPLANATIONS, add_explanations, make_corpus, make_sae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_tok():
    from transformers import AutoTokenizer

    from saescope.assets import tiny_model_dir

    return AutoTokenizer.from_pretrained(str(tiny_model_dir()))


# ------------------------------------------------------------------------------------------ display_tokens
TEXTS = ["Naïve café – “quoted” 日本語 🙂 done", "plain ascii text, nothing split", "Ω≈ç√∫˜µ≤≥÷ 𝔘𝔫𝔦", "\n\tx  y"]


@pytest.mark.parametrize("text", TEXTS)
def test_display_tokens_merge_split_characters(tiny_tok, text):
    """One cell per token; the cells, placeholders removed, read exactly as the tokenizer's own decoding of the
    whole row; cells of tokens that decode whole are the tokenizer's single-token decode."""
    from saescope.lm.tokens import CONTINUATION, display_tokens

    ids = tiny_tok(text, add_special_tokens=False)["input_ids"]
    cells = display_tokens(tiny_tok, ids)
    assert len(cells) == len(ids)
    assert "".join(c for c in cells if c != CONTINUATION) == tiny_tok.decode(ids) == text
    singles = [tiny_tok.decode([i]) for i in ids]
    assert all("\ufffd" not in c for c in cells)
    for c, s in zip(cells, singles):
        if "\ufffd" not in s:
            assert c == s
    if not text.isascii():
        assert any("\ufffd" in s for s in singles)          # the case this is for does occur
        assert CONTINUATION in cells


def test_display_tokens_cut_rows_show_bytes(tiny_tok):
    """A row that starts or ends inside a character (a context window) shows those bytes as \\xNN, never U+FFFD."""
    from saescope.lm.tokens import display_tokens

    ids = tiny_tok("日本", add_special_tokens=False)["input_ids"]
    assert len(ids) > 2
    head, tail = display_tokens(tiny_tok, ids[:-1]), display_tokens(tiny_tok, ids[1:])
    assert head[0] == "日" and re.fullmatch(r"(\\x[0-9a-f]{2})+", "".join(head[-2:]).replace("◌", ""))
    assert re.fullmatch(r"\\x[0-9a-f]{2}", tail[0]) and "本" in tail


def test_display_tokens_byte_fallback_vocabulary():
    """SentencePiece-style byte fallback (<0xE6> pieces, Llama/Gemma) merges the same way."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from saescope.lm.tokens import CONTINUATION, display_tokens

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}, "▁": 257, "a": 258, "b": 259}
    tok = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    ids = fast("a日b", add_special_tokens=False)["input_ids"]
    assert [fast.convert_ids_to_tokens(i) for i in ids][-4:-1] == ["<0xE6>", "<0x97>", "<0xA5>"]
    cells = display_tokens(fast, ids)
    assert cells[-4:] == ["日", CONTINUATION, CONTINUATION, "b"]


# ------------------------------------------------------------------------------------------ nearest features
def test_nearest_by_decoder_cosine_matches_brute_force(tmp_path):
    from saescope.report.browse import DecoderNeighbours
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    sae = SAE(SAEConfig("relu", d_in=16, d_sae=1500, metadata=SAEMetadata(hook_name="blocks.0.hook_resid_pre")), seed=3)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(1500, 1, generator=torch.Generator().manual_seed(0)) + 0.1)   # unequal norms
    W = sae.W_dec.detach().double()
    nb = DecoderNeighbours(sae)
    everything = dict(nb.all(10))                          # chunked (1024 rows at a time): both chunks checked
    for i in (0, 7, 1023, 1024, 1499):
        cos = torch.nn.functional.cosine_similarity(W[i:i + 1], W, dim=-1)
        cos[i] = -2
        want = cos.topk(10)
        got = nb.nearest(i, 10)
        assert [g["index"] for g in got] == want.indices.tolist() and i not in [g["index"] for g in got]
        assert [g["cosine"] for g in got] == pytest.approx(want.values.tolist(), abs=1e-4)
        assert everything[i] == got


# ------------------------------------------------------------------------------------------ histogram
def test_histogram_has_axes_and_uses_the_width():
    from saescope.report.html import hist_svg

    edges = [10 ** (-3 + 6 * i / 40) for i in range(41)]
    counts = [0] * 40
    counts[18:27] = [4, 107, 506, 1716, 3646, 5418, 7438, 9844, 12]
    svg = ET.fromstring(hist_svg(counts, edges))
    ns = "{http://www.w3.org/2000/svg}"
    tag = lambda e: e.tag.replace(ns, "")   # noqa: E731
    texts = [e.text for e in svg.iter() if tag(e) == "text"]
    assert "tokens" in texts and "activation (log scale)" in texts
    y_ticks = [t for t in texts if re.fullmatch(r"[\d,]+", t or "")]
    assert len(y_ticks) >= 3 and "0" in y_ticks and max(int(t.replace(",", "")) for t in y_ticks) >= 9844
    x_ticks = [e for e in svg.iter() if tag(e) == "text" and e.get("class") == "xt"]
    assert len(x_ticks) >= 3
    bars = [e for e in svg.iter() if tag(e) == "rect"]
    assert len(bars) == 9
    x0 = min(float(b.get("x")) for b in bars)
    x1 = max(float(b.get("x")) + float(b.get("width")) for b in bars)
    plot = float(svg.get("width")) - 52 - 10
    assert (x1 - x0) / plot > 0.7                          # the bars use the width, not a third of it
    tallest = max(bars, key=lambda b: float(b.get("height")))
    assert "9,844 tokens" in ET.tostring(tallest, encoding="unicode")
    assert "no activations" in hist_svg([0] * 40, edges)


# ------------------------------------------------------------------------------------------ the app
@pytest.fixture(scope="module")
def app_parts(gpt2_dir, tmp_path_factory):
    from saescope.lm import LanguageModel
    from saescope.report import FeatureStore, StatsConfig, compute_feature_stats

    lm = LanguageModel.from_pretrained(str(gpt2_dir))
    sae = make_sae(lm.name, tmp_path_factory.mktemp("browse") / "sae")
    cfg = StatsConfig(n_tokens=12 * 24, context_size=24, batch_size=6, top_k=5, window=3, checkpoint_every=0)
    compute_feature_stats(lm, sae, make_corpus(12, 24), cfg, out=sae.path / "features.sqlite")
    add_explanations(sae.path / "features.sqlite")
    return lm, sae, FeatureStore.for_sae(sae)


@pytest.fixture(scope="module")
def client(app_parts):
    from fastapi.testclient import TestClient

    from saescope.server import create_app

    lm, sae, store = app_parts
    return TestClient(create_app(lm, sae, str(sae.path), store))


def test_feature_page_explanation_nearest_dense(client, app_parts):
    lm, sae, store = app_parts
    page = client.get("/feature/11").text
    assert "ships and maritime navigation" in page and "detection balanced accuracy <b>0.83</b>" in page
    d = client.get("/api/feature/11").json()
    assert d["explanations"][0]["explanation"] == EXPLANATIONS[11][0] and len(d["nearest"]) == 10
    for n in d["nearest"][:3]:
        assert f'href="/feature/{n["index"]}"' in page
    densities = {s.index: s.density for s in store.summaries()}
    dense = max(densities, key=densities.get)
    sparse = min((i for i in densities if densities[i] > 0), key=densities.get)
    assert densities[dense] > 0.01 >= densities[sparse]
    assert 'class="badge dense"' in client.get(f"/feature/{dense}").text
    assert client.get(f"/api/feature/{dense}").json()["dense"] is True
    assert 'class="badge dense"' not in client.get(f"/feature/{sparse}").text
    assert 'class="tag" title="automatic label">auto</span>' in client.get("/feature/5").text


def test_index_rows_carry_explanations_and_scores(client):
    page = client.get("/").text
    rows = json.loads(page.split('id="features-data">')[1].split("</script>")[0])
    by = {r[0]: r for r in rows}
    assert by[11][5:] == [EXPLANATIONS[11][0], EXPLANATIONS[11][1], "test-llm"]
    assert by[5][4] == "fifth feature" and by[5][5] is None
    assert 'data-search="/api/search"' in page and 'id="hide-dense"' in page


def test_search_by_explanation_label_and_logit_lens(client, app_parts):
    lm, sae, store = app_parts
    hits = client.get("/api/search", params={"q": "maritime"}).json()["features"]
    assert hits[0]["index"] == 11 and hits[0]["matched"] == "explanation"
    assert client.get("/api/search", params={"q": "fifth"}).json()["features"][0]["index"] == 5
    # a word of feature 9's top promoted token (that no label or explanation holds) finds it by the logit lens
    word = next(w for t, _ in store.get(9).pos_logits for w in re.findall(r"\w{3,}", t.lower())
                if not any(w in (s.label or "").lower() for s in store.summaries()))
    hits = client.get("/api/search", params={"q": word, "limit": 200}).json()["features"]
    lens = [h for h in hits if h["matched"] == "logit lens"]
    assert 9 in [h["index"] for h in lens]
    for h in lens:
        assert word in " ".join(t.lower() for t, _ in store.get(h["index"]).pos_logits[:10])


def test_god_search_on_the_bundled_sae_finds_2169():
    """The demo's "God" feature #2169 has no explanation offline and its label has no "God"; its logit lens
    promotes " God", and the search finds it there (the label search alone found 32 others)."""
    from saescope.assets import tiny_sae_dir
    from saescope.report.browse import LensIndex
    from saescope.report.store import FeatureStore

    with FeatureStore(tiny_sae_dir() / "features.sqlite") as store:
        labels_only = [h.index for h in store.search("God", 100)]
        assert 2169 not in labels_only and "god" not in (store.get(2169).label or "").lower()
        index = LensIndex({r.index: [t for t, _ in r.pos_logits[:10]] for r in store.records()})
        found = index.search("God", 1000)
    assert 2169 in [f for f, *_ in found]
    assert next(tok for f, _, _, tok in found if f == 2169) == " God"


def test_static_dashboard_has_nearest_explanations_and_merged_tokens(app_parts, tmp_path):
    from saescope.lm.tokens import display_tokens
    from saescope.report.dashboard import write_dashboard
    from saescope.report.html import show_token

    lm, sae, store = app_parts
    write_dashboard(store, tmp_path / "dash", sae=sae, lm=lm)
    page = (tmp_path / "dash" / "features" / "11.html").read_text()
    assert "ships and maritime navigation" in page and 'id="nearest"' in page and 'href="' in page
    index = (tmp_path / "dash" / "index.html").read_text()
    assert EXPLANATIONS[11][0] in index and 'data-search="' not in index      # no server: search on the page
    # examples whose stored strings hold U+FFFD (a split character) are shown with it merged
    split = [r for r in store.records() if any("\ufffd" in t for e in r.top for t in e.tokens)]
    assert split, "the random corpus should hold split characters"
    for rec in split[:5]:
        page = (tmp_path / "dash" / "features" / f"{rec.index}.html").read_text()
        assert "\ufffd" not in page.split("<h2>Top activations</h2>")[1].split("<h2>")[0]
        shown = display_tokens(lm.tokenizer, rec.top[0].ids)
        first = page.split("<h2>Top activations</h2>")[1].split('<div class="ex">')[1].split("</div>")[0]
        assert re.findall(r'title="[^"]*">(.*?)</span>', first) == [show_token(t) for t in shown]


def test_validation_messages_name_fields_in_words():
    from pydantic import ValidationError

    from saescope.server import ServerConfig
    from saescope.server.forms import request_models, validation_message

    forms = request_models(ServerConfig())
    cases = [(forms.steer, {"prompt": "x", "feature": ["a"], "strength": [1]}, "Features (feature): each entry"),
             (forms.read, {"text": "x", "top_k": 0}, "Top features per token (top_k): must be at least 1."),
             (forms.attribute, {"text": "x", "method": "lrp"}, "Method (method): must be one of dla or gradient."),
             (forms.steer, {"prompt": "x", "feature": [1], "strength": [1], "positions": "AT:1"},
              "Positions (positions): must be all, prompt, generated, from:N or at:N")]
    for model, body, start in cases:
        with pytest.raises(ValidationError) as info:
            model(**body)
        msg = validation_message(info.value.errors())
        assert msg.startswith(start), msg
        assert "list[" not in msg and "Input should" not in msg and "--" not in msg
