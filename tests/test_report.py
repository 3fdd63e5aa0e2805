"""Feature statistics vs a brute-force recomputation, the SQLite store, dashboards and the Neuronpedia export.

The reference is computed independently: HF ``hidden_states`` (block L's resid_pre) -> ``sae.encode`` over the
whole corpus at once, then numpy per feature (sorting, counting, histogramming), never through the accumulator.
"""
from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch

from saescope.errors import InputError
from saescope.report import (FeatureStore, StatsConfig, build_dashboard, compute_feature_stats, export_neuronpedia,
                             write_store)
from saescope.report import stats as stats_mod

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only add contention

LAYER = 3
HOOK = f"blocks.{LAYER}.hook_resid_pre"
N_CTX, CTX = 23, 24
CFG = StatsConfig(n_tokens=N_CTX * CTX, context_size=CTX, batch_size=5, top_k=6, window=3, n_intervals=4,
                  samples_per_interval=2, reservoir=12, hist_bins=24, hist_min=1e-3, hist_max=10.0, logit_k=5,
                  cofire_k=4, cofire_tokens=300, checkpoint_every=1, seed=3)


@pytest.fixture(scope="session")
def rep_lm(gpt2_dir):
    from saescope.lm import LanguageModel

    return LanguageModel.from_pretrained(str(gpt2_dir))


@pytest.fixture(scope="session")
def rep_sae(rep_lm, tmp_path_factory):
    """A random TopK SAE (d_sae 96, k 6) on blocks.3.hook_resid_pre of the GPT-2-shaped fixture, saved to disk
    with a labels.json beside it."""
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    cfg = SAEConfig("topk", d_in=64, d_sae=96, k=6,
                    metadata=SAEMetadata(model_name=rep_lm.name, hook_name=HOOK, neuronpedia_id="gpt2-small/3-test"))
    sae = SAE(cfg, seed=0)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(96, generator=torch.Generator().manual_seed(1)) * 0.01 + 0.01)
    path = tmp_path_factory.mktemp("sae") / "sae"
    sae.save(path)
    (path / "labels.json").write_text(json.dumps({"5": "fifth feature", "7": "a <b>bold</b> label"}))
    return SAE.load(path)


@pytest.fixture(scope="session")
def corpus():
    """Token contexts [23, 24]: BOS (id 0) first, and a few id-0 tokens inside (excluded like BOS)."""
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(1, 4096, (N_CTX, CTX), generator=g)
    toks[:, 0] = 0
    toks[3, 10] = 0
    toks[11, 5] = 0
    return toks


@pytest.fixture(scope="session")
def reference(rep_lm, rep_sae, corpus):
    with torch.no_grad():
        hs = rep_lm.hf_model(corpus, output_hidden_states=True).hidden_states[LAYER]
        f = rep_sae.encode(hs).float()
    mask = corpus != 0
    f = f * mask[..., None]
    return f.numpy(), mask.numpy()


@pytest.fixture(scope="session")
def built(rep_lm, rep_sae, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "features.sqlite"
    stats = compute_feature_stats(rep_lm, rep_sae, corpus, CFG, out=out)
    return stats, out


def test_density_mean_max_hist_match_bruteforce(built, reference):
    stats, _ = built
    f, mask = reference
    n = mask.sum()
    assert stats.n_tokens == n
    flat = f[mask]                                               # [n, d_sae]
    edges = np.logspace(math.log10(CFG.hist_min), math.log10(CFG.hist_max), CFG.hist_bins + 1)
    assert np.allclose(stats.hist_edges, edges)
    fired = 0
    for rec in stats.records:
        col = flat[:, rec.index]
        active = col[col > 0]
        assert rec.n_active == active.size
        assert rec.density == pytest.approx(active.size / n)
        assert rec.mean == pytest.approx(col.sum() / n, rel=1e-5, abs=1e-9)
        assert rec.max == pytest.approx(col.max(), rel=1e-6)
        bins = np.clip(np.searchsorted(edges, active, side="right") - 1, 0, CFG.hist_bins - 1)
        assert rec.hist == np.bincount(bins, minlength=CFG.hist_bins).tolist()
        fired += active.size > 0
    assert fired > 50  # the test exercises real activity


def test_top_examples_match_bruteforce(built, reference, corpus, rep_lm):
    stats, _ = built
    f, mask = reference
    B, T, D = f.shape
    W = CFG.window
    for rec in stats.records:
        col = f[..., rec.index].reshape(-1)
        order = np.argsort(-col, kind="stable")
        expect = col[order[:CFG.top_k]]
        expect = expect[expect > 0]
        assert np.allclose([e.value for e in rec.top], expect, rtol=1e-6)
        if len(expect) and (len(col) < 2 or col[order[0]] > col[order[1]]):
            b, t = divmod(int(order[0]), T)
            lo, hi = max(0, t - W), min(T, t + W + 1)
            ex = rec.top[0]
            assert ex.ids == corpus[b, lo:hi].tolist()
            assert np.allclose(ex.acts, f[b, lo:hi, rec.index], atol=1e-5)
            assert ex.center == t - lo
            assert ex.tokens == [rep_lm.tokenizer.decode([i]) for i in ex.ids]


def test_interval_samples_are_real_and_in_their_interval(built, reference, corpus):
    stats, _ = built
    f, _ = reference
    T = f.shape[1]
    seen = 0
    for rec in stats.records:
        if not rec.intervals:
            continue
        assert len(rec.intervals) == CFG.n_intervals
        assert rec.intervals[-1]["hi"] == pytest.approx(rec.max)
        for iv in rec.intervals:
            assert len(iv["examples"]) <= CFG.samples_per_interval
            for ex in iv["examples"]:
                assert iv["lo"] - 1e-7 <= ex.value <= iv["hi"] + 1e-7 and ex.value > 0
                assert ex.acts[ex.center] == pytest.approx(ex.value, rel=1e-4)
                # the window occurs in the corpus with this feature's activations
                hits = [(b, t) for b in range(f.shape[0]) for t in range(T - len(ex.ids) + 1)
                        if corpus[b, t:t + len(ex.ids)].tolist() == ex.ids]
                assert any(np.allclose(f[b, t:t + len(ex.ids), rec.index], ex.acts, atol=1e-4) for b, t in hits)
                seen += 1
    assert seen > 20


def test_cofiring_matches_dense_cooccurrence(built, reference):
    stats, _ = built
    f, mask = reference
    A = (f[mask][:CFG.cofire_tokens] > 0).astype(np.int64)    # the first cofire_tokens counted tokens
    co = A.T @ A
    c = np.diag(co).copy()
    np.fill_diagonal(co, 0)
    jac = co / np.maximum(c[:, None] + c[None, :] - co, 1)
    for rec in stats.records:
        for item in rec.cofire:
            assert item["count"] == co[rec.index, item["index"]]
            assert item["jaccard"] == pytest.approx(jac[rec.index, item["index"]], abs=1e-5)
        if rec.cofire:
            assert rec.cofire[0]["jaccard"] == pytest.approx(jac[rec.index].max(), abs=1e-5)


def test_logit_lens_matches_hf_unembedding(built, rep_lm, rep_sae):
    """The store's logit lens is the one every surface uses: the direction read as HF's final LayerNorm reads the
    residual (centred, times its gain; its scale is common to all tokens), then HF's unembedding."""
    stats, _ = built
    W_U = rep_lm.hf_model.lm_head.weight.detach().T                      # [d_model, d_vocab], from HF directly
    d = rep_sae.W_dec.detach()
    logits = ((d - d.mean(-1, keepdim=True)) * rep_lm.hf_model.transformer.ln_f.weight.detach()) @ W_U
    for rec in stats.records[:20]:
        top = logits[rec.index].topk(CFG.logit_k)
        assert [v for _, v in rec.pos_logits] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert [s for s, _ in rec.pos_logits] == [rep_lm.tokenizer.decode([i]) for i in top.indices.tolist()]
        low = logits[rec.index].topk(CFG.logit_k, largest=False)
        assert [v for _, v in rec.neg_logits] == pytest.approx(low.values.tolist(), abs=1e-4)


def test_batch_size_does_not_change_results(rep_lm, rep_sae, corpus, built):
    import dataclasses

    stats, _ = built
    other = compute_feature_stats(rep_lm, rep_sae, corpus, dataclasses.replace(CFG, batch_size=23, checkpoint_every=0))
    for a, b in zip(stats.records, other.records):
        assert a.n_active == b.n_active and a.hist == b.hist
        assert [e.value for e in a.top] == pytest.approx([e.value for e in b.top])


def test_resume_after_interruption_gives_same_store(rep_lm, rep_sae, corpus, built, tmp_path, monkeypatch):
    stats, _ = built
    out = tmp_path / "features.sqlite"
    real = stats_mod.StatsAccumulator.update
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(stats_mod.StatsAccumulator, "update", flaky)
    with pytest.raises(KeyboardInterrupt):
        compute_feature_stats(rep_lm, rep_sae, corpus, CFG, out=out)
    assert not out.exists() and (tmp_path / "features.sqlite.partial").exists()
    monkeypatch.setattr(stats_mod.StatsAccumulator, "update", real)
    calls["n"] = 0
    resumed = compute_feature_stats(rep_lm, rep_sae, corpus, CFG, out=out, resume=True)
    assert out.exists() and not (tmp_path / "features.sqlite.partial").exists()
    assert resumed.meta["n_contexts"] == N_CTX
    for a, b in zip(stats.records, resumed.records):
        assert a.to_dict() == b.to_dict()


def test_store_round_trip_and_queries(built, rep_sae, tmp_path):
    stats, path = built
    copy = write_store(tmp_path / "copy.sqlite", stats)
    for p in (path, copy):
        with FeatureStore.for_sae(rep_sae, p) as store:
            assert len(store) == rep_sae.d_sae == store.d_sae
            for rec in stats.records[:10]:
                got = store.get(rec.index)
                expect = rec.to_dict()
                expect["label"] = {5: "fifth feature", 7: "a <b>bold</b> label"}.get(rec.index)
                assert got.to_dict() == expect
            assert store.get(10_000) is None
            by_density = store.summaries(sort="density")
            assert [s.density for s in by_density] == sorted((r.density for r in stats.records), reverse=True)
            assert [s.max for s in store.summaries(sort="max")] == sorted((r.max for r in stats.records), reverse=True)
            labelled = store.summaries(sort="label")
            assert [s.label for s in labelled[:2]] == ["a <b>bold</b> label", "fifth feature"]
            assert [s.index for s in store.summaries(query="fifth")] == [5]
            assert [s.index for s in store.summaries(query="12")] == [12]
            with pytest.raises(InputError):
                store.summaries(sort="nope")
    with pytest.raises(InputError):
        FeatureStore(tmp_path / "missing.sqlite")


def test_neuronpedia_export_has_documented_fields(built, rep_sae, tmp_path):
    # Field lists of Neuronpedia's Feature and Activation rows, as its import utilities read them
    # (written here independently of saescope.report.neuronpedia).
    feature_fields = {"modelId", "layer", "index", "creatorId", "createdAt", "maxActApprox", "hasVector", "vector",
                      "vectorLabel", "vectorDefaultSteerStrength", "hookName", "topkCosSimIndices", "topkCosSimValues",
                      "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
                      "correlated_neurons_indices", "correlated_neurons_pearson", "correlated_neurons_l1",
                      "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
                      "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_heights",
                      "freq_hist_data_bar_values", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
                      "decoder_weights_dist"}
    activation_fields = {"id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue",
                         "values", "creatorId", "dataSource", "dataIndex", "dfaValues", "dfaTargetIndex", "dfaMaxValue",
                         "createdAt", "lossValues", "logitContributions", "binMin", "binMax", "binContains",
                         "qualifyingTokenIndex"}
    stats, path = built
    with FeatureStore(path) as store:
        res = export_neuronpedia(store, tmp_path, model_id="gpt2", features_per_batch=40, include_vectors=True, sae=rep_sae)
    assert res.source_dir == tmp_path / "gpt2" / f"{LAYER}-saescope"
    assert [p.name for p in res.feature_files] == ["batch-0.jsonl.gz", "batch-1.jsonl.gz", "batch-2.jsonl.gz"]
    feats = [json.loads(line) for p in res.feature_files for line in gzip.open(p, "rt")]
    acts = [json.loads(line) for p in res.activation_files for line in gzip.open(p, "rt")]
    assert len(feats) == rep_sae.d_sae and sorted(int(x["index"]) for x in feats) == list(range(rep_sae.d_sae))
    by_index = {r.index: r for r in stats.records}
    for x in feats:
        assert set(x) == feature_fields
        assert isinstance(x["index"], str) and x["layer"] == f"{LAYER}-saescope" and x["modelId"] == "gpt2"
        rec = by_index[int(x["index"])]
        assert x["frac_nonzero"] == pytest.approx(rec.density) and x["maxActApprox"] == pytest.approx(rec.max)
        assert len(x["pos_str"]) == len(x["pos_values"]) == CFG.logit_k
        assert len(x["freq_hist_data_bar_heights"]) == len(x["freq_hist_data_bar_values"])
        assert sum(x["freq_hist_data_bar_heights"]) == rec.n_active
        assert len(x["vector"]) == rep_sae.d_in and x["hasVector"] and x["hookName"] == HOOK
    assert len(acts) == sum(len(r.top) + sum(len(iv["examples"]) for iv in r.intervals) for r in stats.records)
    assert len({a["id"] for a in acts}) == len(acts)
    for a in acts:
        assert set(a) == activation_fields
        assert len(a["tokens"]) == len(a["values"]) and all(isinstance(t, str) for t in a["tokens"])
        assert a["maxValue"] == max(a["values"]) and a["values"][a["maxValueTokenIndex"]] == a["maxValue"]
        assert 0 <= int(a["index"]) < rep_sae.d_sae and a["layer"] == f"{LAYER}-saescope"
    source = json.loads((res.source_dir / "source.jsonl").read_text())
    assert source["id"] == f"{LAYER}-saescope" and source["num_tokens_in_prompt"] == CTX


def test_dashboard_pages_and_out_dir_guard(rep_lm, rep_sae, corpus, tmp_path):
    import dataclasses

    out = tmp_path / "dash"
    res = build_dashboard(rep_lm, rep_sae, corpus, out, dataclasses.replace(CFG, checkpoint_every=0))
    assert res.n_features == rep_sae.d_sae
    index = (out / "index.html").read_text()
    assert "features-data" in index and "<script>" in index and "http" not in index.split("<main>")[0]
    rows = json.loads(index.split('id="features-data">')[1].split("</script>")[0])
    assert len(rows) == rep_sae.d_sae
    page = (out / "features" / "7.html").read_text()
    assert "a &lt;b&gt;bold&lt;/b&gt; label" in page and "<b>bold</b>" not in page   # labels are escaped
    assert "https://www.neuronpedia.org/gpt2-small/3-test/7" in page
    with FeatureStore(out / "features.sqlite") as store:
        rec = store.get(7)
    if rec.top:
        assert f"{rec.top[0].value:.3f}" in page
    # rebuilding over a previous dashboard is allowed; any other non-empty directory is refused
    build_dashboard(rep_lm, rep_sae, corpus, out, dataclasses.replace(CFG, n_tokens=5 * CTX, checkpoint_every=0))
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        build_dashboard(rep_lm, rep_sae, corpus, other, CFG)
    assert (other / "precious.txt").read_text() == "keep me"


def test_config_json_round_trip_and_validation():
    cfg = StatsConfig(n_tokens=1000, top_k=3)
    assert StatsConfig.from_dict(json.loads(cfg.to_json())) == cfg
    from saescope.errors import ConfigError

    with pytest.raises(ConfigError, match="top_k"):
        StatsConfig(top_k=0)
    with pytest.raises(ConfigError, match="bogus"):
        StatsConfig.from_dict({"bogus": 1})


def test_accumulator_any_batching_matches_bruteforce():
    """Synthetic sparse activations split into random batches: counts, histogram, top-k values, mean and
    co-firing counts equal a direct numpy computation over the whole array."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from saescope.report.stats import StatsAccumulator, finalize

    @settings(max_examples=8, deadline=None)
    @given(st.integers(0, 10_000), st.lists(st.integers(1, 7), min_size=1, max_size=5), st.integers(2, 9),
           st.integers(3, 40))
    def check(seed, splits, T, D):
        g = torch.Generator().manual_seed(seed)
        B = sum(splits)
        f = torch.rand(B, T, D, generator=g) * 5 * (torch.rand(B, T, D, generator=g) < 0.2)
        toks = torch.randint(0, 50, (B, T), generator=g)
        mask = torch.rand(B, T, generator=g) < 0.85
        cfg = StatsConfig(top_k=4, window=2, hist_bins=7, hist_min=0.01, hist_max=4.0, cofire_k=3, cofire_tokens=17,
                          reservoir=5, n_intervals=2, samples_per_interval=2)
        acc = StatsAccumulator(D, cfg)
        s = 0
        for b in splits:
            acc.update(toks[s:s + b], f[s:s + b].clone(), mask[s:s + b])
            s += b
        res = finalize(acc)
        ref = (f * mask[..., None]).numpy()
        flat = ref[mask.numpy()]
        edges = np.logspace(-2, math.log10(4.0), 8)
        A = (flat[:17] > 0).astype(np.int64)
        co = A.T @ A
        assert res.n_tokens == flat.shape[0]
        for rec in res.records:
            col = flat[:, rec.index]
            act = col[col > 0]
            assert rec.n_active == act.size
            assert rec.mean == pytest.approx(col.sum() / max(flat.shape[0], 1), rel=1e-5, abs=1e-9)
            bins = np.clip(np.searchsorted(edges, act, side="right") - 1, 0, 6)
            assert rec.hist == np.bincount(bins, minlength=7).tolist()
            expect = np.sort(act)[::-1][:4]
            assert [e.value for e in rec.top] == pytest.approx(expect.tolist(), rel=1e-6)
            for e in rec.top:
                assert e.acts[e.center] == pytest.approx(e.value, rel=1e-5)
            for item in rec.cofire:
                assert item["count"] == co[rec.index, item["index"]] > 0

    check()
