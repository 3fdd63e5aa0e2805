"""Contracts of the attach layer (saescope.site), across model families and SAE kinds.

- DLA: the terms sum to the model's own logit (within 1e-4) on every family, including Gemma's ``x * (1 + w)``
  RMSNorm and Gemma-2's logit soft-cap, with SAEs on every residual-basis hook and with a transcoder.
- The fit check never changes the SAE; conventions are applied by the adapter.
- A feature store built for another SAE is refused (CLI and Python), and accepted with the explicit override.
- One logit lens on every surface: `saescope feature --json`, the feature store and the web app agree.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from saescope.errors import ConfigError, NumericsError
from saescope.interp import direct_logit_attribution, gradient_attribution, read_features, steer
from saescope.interp.steer import Intervention
from saescope.lm import LanguageModel
from saescope.sae import SAE, SAEConfig
from model_zoo import FAMILY_NAMES, build
from saescope.site import Readout, attach, check_fits, fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "Sparse autoencoders find features in the residual stream of"
FAMILIES = list(FAMILY_NAMES)


def _build(kind: str, out):
    """A zoo model with large norm gains (so a readout that ignored Gemma's (1 + w) would be far off); Gemma-2
    gets a small logit soft-cap, so that capping really bends the logits."""
    build(kind, out, norm_noise=0.5)
    if kind == "gemma2":
        cfg = json.loads((out / "config.json").read_text())
        cfg["final_logit_softcapping"] = 0.1   # random-weight logits are small
        (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    made = {}

    def get(kind: str) -> LanguageModel:
        if kind not in made:
            made[kind] = LanguageModel.from_pretrained(str(_build(kind, tmp_path_factory.mktemp(kind))), device="cpu")
        return made[kind]

    return get


def _random_sae(lm, hook: str, *, d_out_hook: str | None = None, skip: bool = False, arch: str = "relu",
                seed: int = 0) -> SAE:
    d = lm.info.d_model
    meta = {"model_name": lm.name, "hook_name": hook, "hook_name_out": d_out_hook}
    cfg = SAEConfig(arch, d_in=d, d_sae=96, k=8 if arch == "topk" else None, d_out=d if d_out_hook else None,
                    skip=skip, metadata=meta)
    sae = SAE(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        if arch == "relu":
            sae.b_enc.fill_(0.05)
    return sae


@pytest.mark.parametrize("kind", FAMILIES)
def test_dla_terms_sum_to_the_logit_on_every_family(family, kind):
    lm = family(kind)
    L = lm.info.n_layers
    hooks = [f"blocks.{L - 1}.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out"]
    for i, hook in enumerate(hooks):
        sae = _random_sae(lm, hook, seed=i)
        logits = lm(attach(lm, sae).tokens(TEXT))[0]
        for target in (None, " the"):
            res = direct_logit_attribution(lm, sae, TEXT, target)
            assert res.value == pytest.approx(float(logits[-1, res.target_id]), abs=1e-5)
            parts = sum(f.attribution for f in res.features) + res.error + res.bias + res.rest + res.constant
            assert parts == pytest.approx(res.value, abs=1e-4 * max(1.0, abs(res.value))), (kind, hook)
            assert res.features, "the fixture SAE should have active features"
    if kind == "gemma2":
        assert res.extra["softcap"]["factor"] != pytest.approx(1.0, abs=1e-3), "the soft-cap should bend the logit"


def test_readout_refuses_a_family_it_gets_wrong(family, monkeypatch):
    """A readout that misses Gemma's (1 + w) gain is an error, not a silent wrong attribution."""
    lm = family("gemma")
    from saescope.site import readout as ro

    real = ro.norm_facts

    def wrong(lm_):
        f = real(lm_)
        return ro.NormFacts(f.kind, 0.0, f.eps, f.softcap)

    monkeypatch.setattr(ro, "norm_facts", wrong)
    sae = _random_sae(lm, "blocks.1.hook_resid_pre")
    with pytest.raises(NumericsError, match="does not reproduce its logit"):
        direct_logit_attribution(lm, sae, TEXT)


def test_transcoder_dla_steer_and_gradient(family):
    """A skip transcoder on block 1's MLP (resid_mid -> mlp_out): DLA terms sum to the logit; clamping every
    feature to its own value (error kept) changes nothing; ablating one changes mlp_out by exactly -a * W_dec[f];
    gradient attribution sees the same features."""
    lm = family("gpt2")
    tc = _random_sae(lm, "blocks.1.hook_resid_mid", d_out_hook="blocks.1.hook_mlp_out", skip=True)
    att = attach(lm, tc)
    assert att.is_transcoder and att.hook_out == "blocks.1.hook_mlp_out" and att.in_residual_basis
    res = direct_logit_attribution(lm, tc, TEXT)
    parts = sum(f.attribution for f in res.features) + res.error + res.bias + res.rest + res.constant
    assert parts == pytest.approx(res.value, abs=1e-4 * max(1.0, abs(res.value)))

    ids = att.tokens(TEXT)
    out = lm.run(ids, capture=["blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"], return_logits=True)
    f = tc.encode(out["blocks.1.hook_resid_mid"])[0].detach()
    active = torch.nonzero(f[-1] > 0).flatten().tolist()
    assert active
    with steer(lm, tc, [Intervention(tuple(active), "clamp", tuple(float(f[-1, i]) for i in active), "at:%d" % (ids.shape[1] - 1))]):
        same = lm(ids)
    torch.testing.assert_close(same, out["logits"], rtol=1e-5, atol=1e-5)
    j = active[0]
    with steer(lm, tc, Intervention(j, "ablate")):
        edited = lm.run(ids, capture="blocks.1.hook_mlp_out")["blocks.1.hook_mlp_out"][0]
    expected = out["blocks.1.hook_mlp_out"][0] - f[:, j:j + 1] * tc.W_dec[j].detach()
    torch.testing.assert_close(edited, expected, rtol=1e-4, atol=1e-5)
    grad = gradient_attribution(lm, tc, TEXT)
    assert {fa.index for fa in grad.features if fa.position == ids.shape[1] - 1} == set(active)
    [read] = read_features(lm, tc, TEXT, top_k=3)
    assert read.hook == "blocks.1.hook_resid_mid"


def test_fit_check_never_mutates(family):
    lm = family("gpt2")
    sae = _random_sae(lm, "blocks.1.hook_resid_pre")
    before = fingerprint(sae), sae.cfg
    check_fits(lm, sae)
    attach(lm, sae)
    assert (fingerprint(sae), sae.cfg) == before
    wrong = _random_sae(lm, "blocks.1.hook_resid_pre")
    wrong.cfg = wrong.cfg.replace(metadata={"model_name": "EleutherAI/pythia-70m"})
    # a model loaded from a local directory is not name-checked (any directory may hold any model)
    check_fits(lm, wrong)


def test_readout_reproduces_the_final_norm(family):
    for kind in ("gpt2", "gemma", "gemma2"):
        lm = family(kind)
        ids = lm.to_tokens(TEXT, prepend_bos=True)
        final = f"blocks.{lm.info.n_layers - 1}.hook_resid_post"
        out = lm.run(ids, capture=final, return_logits=True)
        r = out[final][0, -1]
        readout = Readout(lm)
        for tid in (0, 17, 4095):
            g, c = readout.frozen(r, tid)
            assert readout.cap(float(g @ r.double()) + c) == pytest.approx(float(out["logits"][0, -1, tid]), abs=1e-4)


# ---------------------------------------------------------------------------------------------- artefacts
@pytest.fixture(scope="module")
def two_saes_with_stores(tmp_path_factory, gpt2_hub):
    from saescope.report import StatsConfig, compute_feature_stats

    lm = LanguageModel.from_pretrained(gpt2_hub, device="cpu")
    root = tmp_path_factory.mktemp("stores")
    out = {}
    texts = ["The quick brown fox jumps over the lazy dog. " * 8, "A stitch in time saves nine, they said. " * 8]
    for name, seed in (("a", 0), ("b", 1)):
        sae = _random_sae(lm, "blocks.3.hook_resid_pre", seed=seed)
        sae.cfg = sae.cfg.replace(metadata={"model_name": "gpt2"})
        sae.save(root / name)
        sae = SAE.load(root / name)
        compute_feature_stats(lm, sae, texts, StatsConfig(n_tokens=256, context_size=32, batch_size=4),
                              out=root / name / "features.sqlite")
        out[name] = root / name
    return lm, out


def test_store_from_another_sae_is_refused(two_saes_with_stores):
    from saescope.report.store import FeatureStore

    lm, dirs = two_saes_with_stores
    sae_a = SAE.load(dirs["a"])
    with FeatureStore.for_sae(sae_a, lm=lm) as store:           # its own store
        assert store.meta["sae_fingerprint"] == fingerprint(sae_a)
    with pytest.raises(ConfigError, match="built for another SAE: SAE weights"):
        FeatureStore.for_sae(sae_a, dirs["b"] / "features.sqlite", lm=lm)
    with FeatureStore.for_sae(sae_a, dirs["b"] / "features.sqlite", lm=lm, allow_mismatch=True) as store:
        assert store.meta["sae_fingerprint"] != fingerprint(sae_a)
    cmd = [sys.executable, "-m", "saescope", "feature", "3", "--model", lm.name, "--sae", str(dirs["a"]),
           "--store", str(dirs["b"] / "features.sqlite"), "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "built for another SAE" in run.stderr


def test_one_logit_lens_on_every_surface(two_saes_with_stores):
    """The CLI's `feature --json`, the feature store and the web app's feature API give the same lens."""
    from fastapi.testclient import TestClient

    from saescope.report.store import FeatureStore
    from saescope.server import create_app

    lm, dirs = two_saes_with_stores
    sae = SAE.load(dirs["a"])
    run = subprocess.run([sys.executable, "-m", "saescope", "feature", "5", "--model", lm.name, "--sae",
                          str(dirs["a"]), "--json", "--top", "10"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    cli = json.loads(run.stdout)
    cli_lens = [(t["token"], t["value"]) for t in cli["promoted"]]
    with FeatureStore.for_sae(sae, lm=lm) as store:
        stored = store.get(5).pos_logits
        assert store.meta["logit_lens"] == cli["logit_lens"]
        api = TestClient(create_app(lm, sae, str(dirs["a"]), store)).get("/api/feature/5").json()
    no_store = TestClient(create_app(lm, sae, str(dirs["a"]), None)).get("/api/feature/5").json()
    for surface in (stored, api["pos_logits"], no_store["pos_logits"]):
        assert [t for t, _ in surface] == [t for t, _ in cli_lens]
        assert [v for _, v in surface] == pytest.approx([v for _, v in cli_lens], abs=1e-4)


def test_every_use_refuses_an_sae_for_another_model(two_saes_with_stores):
    """evaluate_sae, statistics and reading apply the same fit check (evaluate_sae used to skip it)."""
    from saescope.evals import evaluate_sae
    from saescope.report import StatsConfig, compute_feature_stats

    lm, dirs = two_saes_with_stores
    other = SAE.load(dirs["a"])
    other.cfg = other.cfg.replace(metadata={"model_name": "EleutherAI/pythia-70m"})
    texts = ["The quick brown fox jumps over the lazy dog. " * 8]
    for call in (lambda: evaluate_sae(lm, other, texts, tokens=64, context_size=16),
                 lambda: compute_feature_stats(lm, other, texts, StatsConfig(n_tokens=64, context_size=16)),
                 lambda: read_features(lm, other, "The quick brown fox")):
        with pytest.raises(ConfigError, match="trained on model 'EleutherAI/pythia-70m'"):
            call()
