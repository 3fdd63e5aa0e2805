"""Scoring maths with judges whose answers are known, answer parsing, example selection, the local chat backend
and the Neuronpedia explanation rows.

AUROC is checked against SciPy's Mann-Whitney U (AUROC = U / (n_pos * n_neg)); balanced accuracy against a
confusion matrix counted with numpy.
"""
from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from saescope.explain import (CoinFlipJudge, ConstantJudge, Context, ExplainConfig, LocalChatClient, OracleJudge,
                              ParseError, Price, TokenExplainer, TokenMatchJudge, Usage, auroc, balanced_accuracy,
                              explain_store, parse_explanation, parse_probabilities, score, split_examples)
from saescope.explain.client import ChatReply, _parse_completion
from saescope.explain.explainer import NegativePool
from saescope.report.store import FeatureStore, write_store
from test_explain import make_stats

MANY = [f"word{i}" for i in range(60)]


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("big") / "features.sqlite", make_stats(seed=1, words=MANY))


def _means(path, judge, tmp_path, name, concurrency=2):
    import shutil

    copy = tmp_path / f"{name}.sqlite"
    shutil.copy(path, copy)
    s = explain_store(copy, TokenExplainer(), judge, ("detection", "fuzzing"), config=ExplainConfig(seed=3),
                      concurrency=concurrency)
    with FeatureStore(copy) as store:
        per = {e["feature"]: {sc["scorer"]: sc["metrics"] for sc in e["scores"]} for e in store.explanations()}
    return s, per


def test_metrics_match_scipy_and_numpy():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(2, 60))
        y = rng.random(n) < rng.uniform(0.1, 0.9)
        if y.all() or not y.any():
            y[0] = not y[0]
        p = np.round(rng.random(n), int(rng.integers(0, 3)))          # rounding makes ties
        u = mannwhitneyu(p[y], p[~y], alternative="two-sided").statistic
        assert auroc(y.tolist(), p.tolist()) == pytest.approx(u / (y.sum() * (~y).sum()), abs=1e-12)
        pred = p >= 0.5
        tpr, tnr = (pred & y).sum() / y.sum(), (~pred & ~y).sum() / (~y).sum()
        assert balanced_accuracy(y.tolist(), p.tolist()) == pytest.approx((tpr + tnr) / 2, abs=1e-12)
    assert auroc([True, True], [0.1, 0.9]) is None and balanced_accuracy([False], [0.3]) is None


def test_oracle_is_perfect_always_yes_is_half_coin_is_chance(big_store, tmp_path):
    s, per = _means(big_store, OracleJudge(), tmp_path, "oracle")
    assert len(per) == len(MANY) and s.skipped == {"no examples": 1}
    for scores in per.values():               # exactly 1.0 on every feature, for both scorers and metrics
        assert scores["detection"] == {"balanced_accuracy": 1.0, "auroc": 1.0}
        assert scores["fuzzing"] == {"balanced_accuracy": 1.0, "auroc": 1.0}
    _, per = _means(big_store, ConstantJudge(1.0), tmp_path, "yes")
    for scores in per.values():
        for kind in ("detection", "fuzzing"):
            assert scores[kind] == {"balanced_accuracy": 0.5, "auroc": 0.5}
    s, per = _means(big_store, CoinFlipJudge(seed=7), tmp_path, "coin")
    for kind in ("detection", "fuzzing"):
        for metric in ("balanced_accuracy", "auroc"):
            m = s.means[kind][metric]
            assert m["features"] == len(MANY) and abs(m["mean"] - 0.5) < 0.06, (kind, metric, m)
    # seeded: the same seed gives the same numbers, whatever the concurrency; another seed others
    _, again = _means(big_store, CoinFlipJudge(seed=7), tmp_path, "coin2", concurrency=1)
    assert again == per
    _, other = _means(big_store, CoinFlipJudge(seed=8), tmp_path, "coin3")
    assert other != per


def test_token_explainer_and_token_match_judge(big_store, tmp_path):
    s, per = _means(big_store, TokenMatchJudge(), tmp_path, "tokens")
    # each synthetic feature fires on exactly one word, which the token explanation names: a perfect literal reader
    assert all(sc == {"balanced_accuracy": 1.0, "auroc": 1.0} for f in per.values() for sc in f.values())
    rec = make_stats().records[0]
    for ex in rec.top:
        ex.tokens[ex.center] = ' "q'                              # a token with a quote survives the round trip
    text = TokenExplainer(k=1).explain(rec, rec.top).text
    assert text == 'the token "\\"q"'
    items = [Context(tuple(rec.top[0].tokens), tuple(rec.top[0].acts), True), Context((" x",), (0.0,), False)]
    assert TokenMatchJudge().judge("detection", text, items) == [1.0, 0.0]
    assert TokenMatchJudge().judge("detection", "no quotes here", items) == [None, None]


def test_score_counts_and_unanswered_items():
    items = [Context(("a", "b"), (1.0, 0.0), True), Context(("c", "d"), (0.0, 0.0), False),
             Context(("e",), (0.5,), True)]

    class Partial:
        name = "partial"

        def judge(self, kind, explanation, items):
            return [0.9, None, 0.2]

    r = score("detection", "x", items, Partial())
    assert (r.n, r.n_unanswered, r.n_positive, r.n_negative) == (2, 1, 2, 1)
    assert r.metrics == {"balanced_accuracy": None, "auroc": None}      # no negative answered: undefined, not 0
    r = score("detection", "x", items, ConstantJudge(1.0))
    assert r.metrics == {"balanced_accuracy": 0.5, "auroc": 0.5}


def test_parse_explanation():
    assert parse_explanation("Explanation: the word \"king\"") == 'the word "king"'
    assert parse_explanation("<think>hmm, maybe rivers?\nExplanation: no</think>\n**Explanation:** Rivers and lakes.") \
        == "Rivers and lakes."
    assert parse_explanation("  \"Mentions of royalty\"  \n") == "Mentions of royalty"
    assert parse_explanation("Sure!\nExplanation: <!--<script> tags") == "<!--<script> tags"
    assert len(parse_explanation("Explanation: " + "x" * 1000)) == 400
    for bad in ("", "   \n ", "<think>only thoughts</think>", "```\n```"):
        with pytest.raises(ParseError):
            parse_explanation(bad)


def test_parse_probabilities():
    assert parse_probabilities("1: 0.9\n2: 0\n3: 1", 3) == [0.9, 0.0, 1.0]
    assert parse_probabilities("Excerpt 2 - yes\n1. no", 2) == [0.0, 1.0]
    assert parse_probabilities("1: 80%\n2: 7", 2) == [0.8, None]               # 7 is no probability
    assert parse_probabilities("Here: [1, 0, 0.5]", 3) == [1.0, 0.0, 0.5]
    assert parse_probabilities("<think>1: 1\n2: 1</think>1: 0\n2: 0", 2) == [0.0, 0.0]
    assert parse_probabilities("3: 1\n1: 0", 2) == [0.0, None]                 # item 3 does not exist
    with pytest.raises(ParseError):
        parse_probabilities("I cannot tell.", 2)


def test_split_holds_examples_out_and_is_seeded():
    rec = make_stats(seed=4).records[2]
    a, b = split_examples(rec, seed=0), split_examples(rec, seed=0)
    assert [e.ids for e in a.explain] == [e.ids for e in b.explain]
    keys = lambda exs: {(tuple(e.ids), e.center) for e in exs}  # noqa: E731
    assert not keys(a.explain) & keys(a.held_out)
    assert len(a.explain) == round(0.6 * len(rec.top)) and len(a.held_out) >= len(rec.top) - len(a.explain)
    assert any(keys(split_examples(rec, seed=s).explain) != keys(a.explain) for s in range(1, 6))
    dup = rec.top[0]                         # an interval sample identical to an explained example is not held out
    rec.intervals[0]["examples"].append(dup)
    split = split_examples(rec, seed=0)
    if (tuple(dup.ids), dup.center) in keys(split.explain):
        assert (tuple(dup.ids), dup.center) not in keys(split.held_out)


def test_negative_pool_excludes_cofiring_features_and_active_tokens():
    stats = make_stats(seed=5)
    recs = stats.records
    pool = NegativePool([(r.index, e) for r in recs for e in r.top])
    target = recs[0]
    target.cofire = [{"index": 1, "count": 3, "jaccard": 0.5}]
    negs = pool.sample(target, 1000, random.Random(0))
    active = {t for e in target.top for t, a in zip(e.ids, e.acts) if a > 0}
    assert negs and all(not active & set(e.ids) and max(e.acts) == 0 for e in negs)
    owners_ids = {tuple(e.ids) for r in recs[:2] for e in r.top}
    assert not owners_ids & {tuple(e.ids) for e in negs}
    assert len(negs) == sum(len(r.top) for r in recs[2:])


def test_usage_and_prices():
    u = Usage()
    u.add(ChatReply("a", "m1", 1000, 100))
    u.add(ChatReply("b", "m2", 10, 1, usage_reported=False))
    model, price = Price.parse("m1=2.5:10")
    out = u.summary({model: price})
    assert out["models"]["m1"]["cost_usd"] == pytest.approx((1000 * 2.5 + 100 * 10) / 1e6)
    assert out["cost_usd"] is None and out["replies_without_usage"] == 1     # m2 has no price: unknown, not free
    assert u.summary({"m1": price, "m2": Price(1, 1)})["cost_usd"] == pytest.approx(0.0035 + 11e-6)
    from saescope.errors import InputError

    for bad in ("m1", "m1=1", "=1:2", "m=a:b", "m=-1:2", "m=inf:1"):
        with pytest.raises(InputError):
            Price.parse(bad)
    r = _parse_completion({"choices": [{"message": {"content": "hi"}}]}, "m", "http://x")
    assert r.text == "hi" and not r.usage_reported and r.prompt_tokens == 0


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A small random GPT-2 with a 1024-token context (room for the prompts) and the bundled tokenizer."""
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from saescope.assets import tiny_model_dir

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("chat")
    GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_positions=1024, n_embd=32, n_layer=2, n_head=2, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(out, safe_serialization=True)
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir() / name, out / name)
    return out


def test_local_chat_model_same_interface(chat_dir, tmp_path):
    from saescope.explain import LLMError, LLMExplainer, LLMJudge
    from saescope.lm import LanguageModel

    lm = LanguageModel.from_pretrained(str(chat_dir))
    client = LocalChatClient(str(chat_dir), lm=lm)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]
    plain = client.prompt_ids(msgs)
    assert lm.to_string(plain).endswith("User: Say hi.\n\nAssistant:")
    reply = client.chat(msgs, max_tokens=6)
    assert reply.prompt_tokens == len(plain) and 1 <= reply.completion_tokens <= 6
    ids = lm.generate(lm.to_tokens(lm.to_string(plain), prepend_bos=False), max_new_tokens=6, stop_at_eos=True)
    assert reply.text == lm.tokenizer.decode(ids[0, len(plain):len(plain) + reply.completion_tokens].tolist(),
                                             skip_special_tokens=True)
    lm.tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                                  "{% if add_generation_prompt %}<assistant>{% endif %}")
    try:
        templ = client.prompt_ids(msgs)
        assert lm.tokenizer.decode(templ) == "<system>Be brief.<user>Say hi.<assistant>"
        # the local model drives the explainer and the judge through explain_store like a remote one
        path = write_store(tmp_path / "f.sqlite", make_stats())
        s = explain_store(path, LLMExplainer(client, max_tokens=8), LLMJudge(client, max_tokens=8), ("detection",),
                          features=[0, 1], concurrency=2)
        assert s.usage["requests"] >= 2 and s.usage["prompt_tokens"] > 0 and s.usage["replies_without_usage"] == 0
        assert s.explained + len(s.failed) >= 2
        with pytest.raises(LLMError, match="too many for its context"):
            client.chat([{"role": "user", "content": "word " * 2000}])
    finally:
        lm.tokenizer.chat_template = None


def test_neuronpedia_export_carries_explanations(tmp_path):
    from saescope.report import export_neuronpedia

    # Neuronpedia's Explanation row fields as its explanation export writes them, plus notes/createdAt (columns of
    # its Explanation table), written here independently of saescope.report.neuronpedia
    fields = {"id", "modelId", "layer", "index", "authorId", "description", "embedding", "typeName",
              "explanationModelName", "umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity", "notes",
              "createdAt"}
    path = write_store(tmp_path / "f.sqlite", make_stats())
    with FeatureStore(path) as store:
        assert export_neuronpedia(store, tmp_path / "before", model_id="m").explanation_files == []
    explain_store(path, TokenExplainer(), OracleJudge(), ("detection",))
    with FeatureStore(path) as store:
        res = export_neuronpedia(store, tmp_path / "np", model_id="m", explanation_model_names={"none": "np-model"})
        expl = {e["feature"]: e for e in store.explanations()}
    rows = [json.loads(line) for p in res.explanation_files for line in gzip.open(p, "rt")]
    assert len(rows) == len(expl) == 10 and len({r["id"] for r in rows}) == 10
    for r in rows:
        assert set(r) == fields and r["layer"] == "0-saescope" and r["modelId"] == "m"
        e = expl[int(r["index"])]
        assert r["description"] == e["explanation"] and r["explanationModelName"] == "np-model"
        assert "detection (oracle, n=" in r["notes"] and "balanced_accuracy 1.000" in r["notes"]


def test_verified_negatives_from_text_match_the_model(gpt2_dir):
    """from_model's windows and their active features equal a recomputation from HF hidden states (full context),
    and a feature is only ever given windows on which it is 0."""
    import torch

    from saescope.data import contexts_from
    from saescope.lm import LanguageModel
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    lm = LanguageModel.from_pretrained(str(gpt2_dir))
    sae = SAE(SAEConfig("topk", d_in=64, d_sae=48, k=4, metadata=SAEMetadata(hook_name="blocks.3.hook_resid_pre")), seed=2)
    rng = random.Random(0)
    texts = [" ".join(rng.choice(["river", "king", "stone", "the", "of", "ran", "blue", "night"]) for _ in range(80))
             for _ in range(6)]
    pool = NegativePool.from_model(lm, sae, texts, n_contexts=6, context_size=32, window=3, batch_size=4, seed=1)
    assert pool.source == "text (verified)" and len(pool.contexts) > 10
    ctxs = torch.stack(list(contexts_from(lm, texts, 32, prepend_bos=True, seed=1))[:6])
    with torch.no_grad():
        f = sae.encode(lm.hf_model(ctxs, output_hidden_states=True).hidden_states[3]) > 0
    expect = []
    for b in range(ctxs.shape[0]):
        for lo in range(0, 32 - 7 + 1, 7):
            ids = ctxs[b, lo:lo + 7].tolist()
            if 0 not in ids:                                      # BOS/EOS (id 0) windows are not used
                expect.append((ids, frozenset(f[b, lo:lo + 7].any(0).nonzero().flatten().tolist())))
    assert [(ex.ids, on) for (_, ex), on in zip(pool.contexts, pool.active)] == expect
    by_ids = {tuple(ids): on for ids, on in expect}
    for feat in range(sae.d_sae):
        rec = make_stats().records[0]
        rec.index = feat
        for ex in pool.sample(rec, 100, random.Random(feat)):
            assert feat not in by_ids[tuple(ex.ids)] and max(ex.acts) == 0
