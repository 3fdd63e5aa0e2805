"""saescope.interp on the GPT-2-shaped offline fixture, with small random SAEs built here.

References are independent recomputations: plain forward passes, hand-written LayerNorm/unembedding algebra,
and real ablations (for gradient attribution).
"""
from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from saescope.errors import ConfigError, HookError, InputError
from saescope.interp import (Intervention, check_fits, direct_logit_attribution, feature_info, feature_trace,
                             features_on_token, generate_steered, gradient_attribution, parse_algebra,
                             read_features, steer)
from saescope.lm import LanguageModel
from saescope.sae import SAE, SAEConfig, SAEMetadata

HOOK = "blocks.6.hook_resid_pre"
TEXT = "The quick brown fox jumps over the lazy dog because it was"


def make_sae(hook=HOOK, d_sae=128, transform="center", seed=0, model="gpt2", bias=-0.02) -> SAE:
    cfg = SAEConfig("relu", d_in=64, d_sae=d_sae, input_transform=transform,
                    metadata=SAEMetadata(model_name=model, hook_name=hook, neuronpedia_id="gpt2-small/6-res-jb"))
    sae = SAE(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn(sae.W_enc.shape, generator=g))
        sae.b_enc.fill_(bias)
        sae.b_dec.copy_(0.05 * torch.randn(64, generator=g))
        sae.W_dec.mul_(1 + torch.rand(d_sae, 1, generator=g))   # non-unit rows: norms must not be assumed
    return sae


@pytest.fixture(scope="module")
def lm(gpt2_hub) -> LanguageModel:
    return LanguageModel.from_pretrained(gpt2_hub, device="cpu")


@pytest.fixture(scope="module")
def sae() -> SAE:
    return make_sae()


@torch.no_grad()
def clean(lm, sae, text=TEXT):
    """Independent reference: token ids, hook activation [pos, d], features [pos, d_sae], logits [pos, vocab]."""
    ids = lm.to_tokens(text, prepend_bos=True)
    out = lm.run(ids, capture=HOOK, return_logits=True)
    return ids, out[HOOK][0], sae.encode(out[HOOK][0]).detach(), out["logits"][0]


# ---------------------------------------------------------------------------------------------- reading
def test_read_top_features_and_sparsity(lm, sae):
    ids, _, f, _ = clean(lm, sae)
    [res] = read_features(lm, sae, TEXT, top_k=4)
    assert [r.token_id for r in res.tokens] == ids[0].tolist()   # BOS is row 0
    assert res.tokens[0].token == "<|endoftext|>"
    l0 = (f > 0).sum(-1)
    assert 3 < float(l0.float().mean()) < 100, "the fixture SAE should be sparse but active"
    for p, row in enumerate(res.tokens):
        expect = [i for i in torch.argsort(f[p], descending=True)[:4].tolist() if f[p, i] > 0]
        assert [x.index for x in row.features] == expect
        assert [x.activation for x in row.features] == pytest.approx(f[p, expect].tolist(), abs=1e-6)
        assert row.l0 == int(l0[p])
    assert res.mean_l0 == pytest.approx(float(l0.float().mean()))
    assert res.percent_active == pytest.approx(100 * float((f > 0).any(0).float().mean()))
    # batched (padded) reading gives the same rows as one text at a time
    both = read_features(lm, sae, [TEXT, "fox"], top_k=4)
    assert [r.to_dict() for r in both[0].tokens] == [r.to_dict() for r in res.tokens]


def test_trace_and_token_features(lm, sae):
    ids, _, f, _ = clean(lm, sae)
    tr = feature_trace(lm, sae, TEXT, [3, 5])
    torch.testing.assert_close(tr.activations, f[:, [3, 5]], atol=1e-6, rtol=0)
    stats = features_on_token(lm, sae, [TEXT, "the dog and the cat and the end"], " the")
    assert stats.occurrences == 3 and stats.texts == 2
    tid = stats.token_id
    rows = [f[ids[0] == tid]]
    ids2 = lm.to_tokens("the dog and the cat and the end", prepend_bos=True)
    with torch.no_grad():
        rows.append(sae.encode(lm.run(ids2, capture=HOOK)[HOOK][0])[ids2[0] == tid])
    acts = torch.cat(rows)
    top = stats.features[0]
    assert top.fraction == pytest.approx(float((acts[:, top.index] > 0).float().mean()))
    assert top.mean_activation == pytest.approx(float(acts[:, top.index].mean()), abs=1e-6)
    with pytest.raises(InputError, match="not one"):
        features_on_token(lm, sae, [TEXT], "quick brown")


def test_long_text_truncates_with_warning(lm, sae, caplog):
    long = "word " * 400
    with caplog.at_level(logging.WARNING):
        [res] = read_features(lm, sae, long)
    assert len(res.tokens) == lm.info.n_ctx and "longer than the context" in caplog.text


# ---------------------------------------------------------------------------------------------- steering: must-show
def test_clamp_identity_keeps_logits(lm, sae):
    """Clamp every feature, at every position, to the value it has there (read in a separate pass): the logits do
    not move (the SAE error is kept; a replace-by-reconstruction would move them, checked as a control)."""
    ids, _, f, logits = clean(lm, sae)
    ivs = [Intervention(tuple(range(sae.d_sae)), "clamp", tuple(f[p].tolist()), positions=f"at:{p}")
           for p in range(ids.shape[1])]
    with steer(lm, sae, ivs):
        steered = lm(ids)[0]
    assert (steered - logits).abs().max() <= 1e-4
    with lm.intervene({HOOK: lambda a: sae.forward(a)}):   # control: throws the error term away
        assert (lm(ids)[0] - logits).abs().max() > 1e-2


def test_ablation_delta_is_exact(lm, sae):
    ids, x, f, _ = clean(lm, sae)
    i = int((f > 0).sum(0).argmax())                       # a feature active on some but maybe not all tokens
    active = f[:, i] > 0
    assert active.any()
    with steer(lm, sae, Intervention(i, "ablate")):
        x_abl = lm.run(ids, capture=HOOK)[HOOK][0]
    expect = -f[:, i:i + 1] * sae.W_dec[i].detach()        # raw space: the centering shift cancels
    torch.testing.assert_close(x_abl - x, expect, atol=1e-5, rtol=0)
    assert (x_abl - x)[~active].abs().max() == 0 if (~active).any() else True
    # scale by 3 adds 2 * act * W_dec[i]
    with steer(lm, sae, Intervention(i, "scale", 3.0)):
        x_sc = lm.run(ids, capture=HOOK)[HOOK][0]
    torch.testing.assert_close(x_sc - x, -2 * expect, atol=1e-5, rtol=0)


def test_add_and_algebra_directions(lm, sae):
    ids, x, _, _ = clean(lm, sae)
    with steer(lm, sae, Intervention(7, "add", 2.5, positions="from:3")):
        x_add = lm.run(ids, capture=HOOK)[HOOK][0]
    d7 = sae.W_dec[7].detach()
    torch.testing.assert_close(x_add[3:] - x[3:], (2.5 * d7).expand(x.shape[0] - 3, -1), atol=1e-5, rtol=0)
    assert (x_add[:3] - x[:3]).abs().max() == 0
    with steer(lm, sae, Intervention(7, "add", 2.5, normalize=True)):
        x_n = lm.run(ids, capture=HOOK)[HOOK][0]
    assert float((x_n - x)[0].norm()) == pytest.approx(2.5, rel=1e-4)
    with steer(lm, sae, Intervention.algebra("2*5-7", strength=1.5)):
        x_alg = lm.run(ids, capture=HOOK)[HOOK][0]
    expect = 1.5 * (2 * sae.W_dec[5] - sae.W_dec[7]).detach()
    torch.testing.assert_close(x_alg - x, expect.expand_as(x), atol=1e-5, rtol=0)


def test_parse_algebra():
    assert parse_algebra("12-7") == [(12, 1.0), (7, -1.0)]
    assert parse_algebra("+3*12 -1*7") == [(12, 3.0), (7, -1.0)]
    assert parse_algebra(" 0.5*4 + 2 ") == [(4, 0.5), (2, 1.0)]
    for bad in ["", "12 7", "a-7", "3*", "12--7"]:
        with pytest.raises(InputError):
            parse_algebra(bad)


def test_every_generated_step_is_steered_under_kv_cache(lm, sae):
    """A probe records the edit at every call: the prompt pass and each single-token KV-cached step carry
    the steering vector. And the cached, steered generation equals a no-cache recomputation under the same
    steering (greedy argmax of full forwards), while differing from the baseline."""
    prompt, n_new, s = "The quick brown", 8, 6.0
    iv = Intervention(9, "add", s, positions="from:2")
    ids = lm.to_tokens(prompt, prepend_bos=True)
    p = ids.shape[1]
    with steer(lm, sae, iv, record=True) as hook:
        out = lm.generate(ids, max_new_tokens=n_new)
    d = s * sae.W_dec[9].detach()
    assert [r[0] for r in hook.records] == list(range(n_new))          # step 0 (prompt) .. n_new - 1
    _, prompt_pos, prompt_delta = hook.records[0]
    assert prompt_pos[0].tolist() == list(range(p))
    torch.testing.assert_close(prompt_delta[0, 2:], d.expand(p - 2, -1), atol=1e-6, rtol=0)
    assert prompt_delta[0, :2].abs().max() == 0
    for step, pos, delta in hook.records[1:]:
        assert pos.tolist() == [[p + step - 1]] and delta.shape[1] == 1
        torch.testing.assert_close(delta[0, 0], d, atol=1e-6, rtol=0)
    # no-cache recomputation
    seq = out[0]
    with steer(lm, sae, iv):
        full = lm(seq[None])[0]
    assert full[p - 1:-1].argmax(-1).tolist() == seq[p:].tolist()
    baseline = lm.generate(ids, max_new_tokens=n_new)[0]
    assert baseline.tolist() != seq.tolist(), "the steering should change this greedy generation"


def test_generated_only_positions(lm, sae):
    with steer(lm, sae, Intervention(9, "add", 4.0, positions="generated"), record=True) as hook:
        lm.generate("The quick brown", max_new_tokens=3)
    assert hook.records[0][2].abs().max() == 0                           # prompt pass untouched
    assert all(r[2].abs().max() > 0 for r in hook.records[1:])
    with steer(lm, sae, Intervention(9, "add", 4.0, positions="prompt"), record=True) as hook:
        lm.generate("The quick brown", max_new_tokens=3)
    assert hook.records[0][2].abs().min() >= 0 and hook.records[0][2].abs().max() > 0
    assert all(r[2].abs().max() == 0 for r in hook.records[1:])


def test_generate_steered_same_seed(lm, sae):
    kw = dict(max_new_tokens=4, temperature=1.0, top_p=0.9, seed=123)
    zero = generate_steered(lm, sae, "The quick", [Intervention(9, "add", 0.0)], **kw)
    assert zero.steered == zero.baseline and zero.steered_ids == zero.baseline_ids
    again = generate_steered(lm, sae, "The quick", [Intervention(9, "add", 0.0)], **kw)
    assert again.baseline_ids == zero.baseline_ids
    strong = generate_steered(lm, sae, "The quick", [Intervention(9, "add", 8.0), Intervention(3, "ablate")],
                              max_new_tokens=6, temperature=0)
    assert strong.steered_ids != strong.baseline_ids
    assert strong.baseline_ids == lm.generate(lm.to_tokens("The quick"), max_new_tokens=6)[0, -6:].tolist()


# ---------------------------------------------------------------------------------------------- attribution
@torch.no_grad()
def _dla_reference(lm, r, comp, tid):
    """Hand-written: component ``comp`` [d] read through ln_f with its scale frozen at residual ``r`` [d]."""
    ln = lm.final_norm()
    scale = torch.sqrt(r.double().var(unbiased=False) + ln.eps)
    comp = comp.detach()
    return float(((comp.double() - comp.double().mean()) / scale * ln.weight.double()) @ lm.unembed_matrix().double()[:, tid])


@pytest.mark.parametrize("hook", [HOOK, "blocks.11.hook_resid_post"])
def test_dla_sums_to_the_logit(lm, hook):
    sae = make_sae(hook=hook, seed=3)
    res = direct_logit_attribution(lm, sae, TEXT, " the")
    ids = lm.to_tokens(TEXT)
    out = lm.run(ids, capture=[hook, "blocks.11.hook_resid_post"], return_logits=True)
    tid = lm.to_tokens(" the", prepend_bos=False)[0, 0].item()
    assert res.target_id == tid and res.value == pytest.approx(float(out["logits"][0, -1, tid]), abs=1e-6)
    assert abs(res.total - res.value) <= 1e-4 * max(1.0, abs(res.value))      # the documented tolerance
    r = out["blocks.11.hook_resid_post"][0, -1]
    x = out[hook][0, -1]
    f = sae.encode(x).detach()
    top = res.features[0]
    assert top.activation == pytest.approx(float(f[top.index]), abs=1e-6)
    assert top.attribution == pytest.approx(_dla_reference(lm, r, f[top.index] * sae.W_dec[top.index], tid), abs=1e-6)
    assert res.error == pytest.approx(_dla_reference(lm, r, x - sae.forward(x), tid), abs=1e-6)
    assert len(res.features) == int((f > 0).sum())
    if hook.endswith("11.hook_resid_post"):
        assert res.rest == pytest.approx(0.0, abs=1e-9)      # SAE on the final residual: nothing else
    else:
        assert abs(res.rest) > 1e-4


def test_gradient_attribution_predicts_ablation(lm, sae):
    """First-order agreement: the predicted change of the logit when ablating a feature everywhere,
    -sum_p act*grad, against the real change from a steered forward pass."""
    res = gradient_attribution(lm, sae, TEXT, " the")
    ids = lm.to_tokens(TEXT)
    tid = res.target_id
    base = float(lm(ids)[0, -1, tid])
    assert res.value == pytest.approx(base, abs=1e-5)           # the splice leaves the forward unchanged
    totals = res.by_feature()
    chosen = list(totals)[:8]
    predicted, actual = [], []
    for i in chosen:
        with steer(lm, sae, Intervention(i, "ablate")):
            actual.append(float(lm(ids)[0, -1, tid]) - base)
        predicted.append(-totals[i])
    pr, ac = torch.tensor(predicted), torch.tensor(actual)
    corr = float(torch.corrcoef(torch.stack([pr, ac]))[0, 1])
    assert corr > 0.9, (predicted, actual)
    # first order exactly: scaling a feature by (1 - eps) changes the metric by eps * (predicted ablation effect)
    eps = 1e-2
    for i, pred in list(zip(chosen, predicted))[:3]:
        with steer(lm, sae, Intervention(i, "scale", 1 - eps)):
            small = (float(lm(ids)[0, -1, tid]) - base) / eps
        assert small == pytest.approx(pred, rel=0.05, abs=1e-4)
    assert len(res.extra["error_by_position"]) == ids.shape[1]


# ---------------------------------------------------------------------------------------------- feature info
def test_feature_info_logit_lens_labels_url(lm, sae, tmp_path):
    sae2 = make_sae()
    sae2.path = tmp_path
    (tmp_path / "labels.json").write_text(json.dumps({"5": "foxes", "x": "ignored"}))
    info = feature_info(lm, sae2, 5, k=5)
    assert info.label == "foxes"
    assert info.neuronpedia_url == "https://www.neuronpedia.org/gpt2-small/6-res-jb/5"
    assert info.contexts is None and "features.sqlite" in info.contexts_note
    ln = lm.final_norm()
    d = sae2.W_dec[5].detach().double()
    scores = ((d - d.mean()) * ln.weight.double()) @ lm.unembed_matrix().double()
    assert [t.token_id for t in info.promoted] == scores.topk(5).indices.tolist()
    assert [t.token_id for t in info.suppressed] == (-scores).topk(5).indices.tolist()
    [res] = read_features(lm, sae2, TEXT, top_k=128)
    labelled = [f for row in res.tokens for f in row.features if f.index == 5]
    assert labelled and all(f.label == "foxes" for f in labelled)
    (tmp_path / "labels.json").write_text("{not json")
    assert feature_info(lm, sae2, 5).label is None      # a broken labels file is ignored with a warning


# ---------------------------------------------------------------------------------------------- compatibility / bad input
def test_check_fits(lm):
    check_fits(lm, make_sae(model="gpt2-small"))
    check_fits(lm, make_sae(model="openai-community/gpt2"))
    with pytest.raises(ConfigError, match="trained on model 'EleutherAI/pythia-70m'"):
        check_fits(lm, make_sae(model="EleutherAI/pythia-70m"))
    wide = SAE(SAEConfig("relu", d_in=32, d_sae=8, metadata=SAEMetadata(model_name="gpt2", hook_name=HOOK)))
    with pytest.raises(ConfigError, match="d_in=32 does not match the width 64"):
        check_fits(lm, wide)
    with pytest.raises(HookError):
        check_fits(lm, make_sae(hook="blocks.40.hook_resid_pre"))
    with pytest.raises(ConfigError, match="hook_name"):
        check_fits(lm, SAE(SAEConfig("relu", d_in=64, d_sae=8)))


@pytest.mark.parametrize("call, match", [
    (lambda lm, s: Intervention(3, "add", float("nan")), "finite"),
    (lambda lm, s: Intervention(3, "add", float("inf")), "finite"),
    (lambda lm, s: Intervention(3, "add", 1e9), "absurd"),
    (lambda lm, s: Intervention(3, "nudge", 1.0), "unknown steering method"),
    (lambda lm, s: Intervention(3, "add", 1.0, positions="middle"), "positions"),
    (lambda lm, s: generate_steered(lm, s, "Hi", [Intervention(500, "add", 1.0)]), "out of range"),
    (lambda lm, s: generate_steered(lm, s, "Hi", [Intervention(-1, "add", 1.0)]), "out of range"),
    (lambda lm, s: generate_steered(lm, s, "Hi", [Intervention(1)], max_new_tokens=0), "max_new_tokens"),
    (lambda lm, s: generate_steered(lm, s, "Hi", [Intervention(1)], max_new_tokens=5000), "max_new_tokens"),
    (lambda lm, s: generate_steered(lm, s, "Hi", [Intervention(1)], temperature=-1), "temperature"),
    (lambda lm, s: generate_steered(lm, s, "", [Intervention(1)]), "empty"),
    (lambda lm, s: generate_steered(lm, s, "word " * 120, [Intervention(1)], max_new_tokens=20), "context"),
    (lambda lm, s: read_features(lm, s, ""), "empty"),
    (lambda lm, s: read_features(lm, s, TEXT, top_k=0), "top_k"),
    (lambda lm, s: feature_trace(lm, s, TEXT, [128]), "out of range"),
    (lambda lm, s: direct_logit_attribution(lm, s, TEXT, "quick brown"), "not one"),
    (lambda lm, s: feature_info(lm, s, 10**6), "out of range"),
])
def test_bad_input_is_one_line(lm, sae, call, match):
    with pytest.raises(InputError, match=match) as err:
        call(lm, sae)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("head", [None, 2])
def test_hook_z_sites(lm, head):
    """attn.hook_z [pos, n_heads, d_head]: an SAE on all heads concatenated (d_in 64) or on one head (d_in 16)."""
    hook = "blocks.3.attn.hook_z"
    d_in = 64 if head is None else 16
    cfg = SAEConfig("relu", d_in=d_in, d_sae=32, metadata=SAEMetadata(model_name="gpt2", hook_name=hook,
                                                                      hook_head_index=head))
    z_sae = SAE(cfg, seed=4)
    ids = lm.to_tokens(TEXT)
    with torch.no_grad():
        z = lm.run(ids, capture=hook)[hook][0]                                     # [pos, 4, 16]
        x = z.flatten(-2) if head is None else z[:, head]
        f = z_sae.encode(x)
    i = int((f > 0).sum(0).argmax())
    [res] = read_features(lm, z_sae, TEXT, top_k=2)
    assert res.tokens[3].features[0].index == int(f[3].argmax())
    with steer(lm, z_sae, Intervention(i, "ablate")):
        z_abl = lm.run(ids, capture=hook)[hook][0]
    delta = (z_abl - z).flatten(-2) if head is None else (z_abl - z)[:, head]
    torch.testing.assert_close(delta, -f[:, i:i + 1] * z_sae.W_dec[i].detach(), atol=1e-5, rtol=0)
    if head is not None:
        others = [h for h in range(4) if h != head]
        assert (z_abl - z)[:, others].abs().max() == 0
    with pytest.raises(InputError, match="direct logit attribution needs"):
        direct_logit_attribution(lm, z_sae, TEXT)
    g = gradient_attribution(lm, z_sae, TEXT)
    assert g.features and math.isfinite(g.error)


def test_nonfinite_is_a_numerics_error(lm):
    """An SAE whose encoder overflows: read and attribution stop with one line, instead of printing inf."""
    from saescope.errors import NumericsError

    bad = make_sae()
    with torch.no_grad():
        bad.W_enc.copy_(torch.randn(bad.W_enc.shape, generator=torch.Generator().manual_seed(0)) * 1e38)
        bad.b_enc.fill_(3e38)                      # finite weights; x @ W_enc + b_enc overflows to inf
    for call in (lambda: read_features(lm, bad, TEXT), lambda: direct_logit_attribution(lm, bad, TEXT),
                 lambda: gradient_attribution(lm, bad, TEXT)):
        with pytest.raises(NumericsError, match="produced (inf|NaN)") as err:
            call()
        assert "\n" not in str(err.value)
