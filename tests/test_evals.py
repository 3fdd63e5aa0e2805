"""saescope.evals: metric definitions on hand-derivable cases, streaming == one-shot, and the whole
evaluation against an independent recomputation (plain HF forward + torch hook) and SAELens's evals."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from saescope.evals import metrics as M


# ----------------------------------------------------------------------------------------------------------
# pure metrics
# ----------------------------------------------------------------------------------------------------------

def test_perfect_reconstruction():
    x = torch.randn(2, 5, 8)
    assert M.explained_variance(x, x) == 1.0
    assert M.fvu(x, x) == 0.0
    assert M.mse(x, x) == 0.0
    assert M.cosine_similarity(x, x) == pytest.approx(1.0, abs=1e-12)
    assert M.l2_ratio(x, x) == pytest.approx(1.0, abs=1e-12)
    assert M.relative_reconstruction_bias(x, x) == pytest.approx(1.0, abs=1e-12)


def test_mean_reconstruction_has_zero_ev():
    x = torch.randn(50, 6) + 3.0
    x_hat = x.mean(0, keepdim=True).expand_as(x)
    assert M.explained_variance(x, x_hat) == pytest.approx(0.0, abs=1e-12)
    assert M.fvu(x, x_hat) == pytest.approx(1.0, abs=1e-12)
    # reconstructing with zero is worse than the mean when x has a non-zero mean: EV < 0
    assert M.explained_variance(x, torch.zeros_like(x)) < -1.0


def test_hand_computed_values():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])        # mean [2, 0]; Σ‖x - mean‖² = 2
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 0.0]])    # Σ‖x - x̂‖² = 1
    assert M.explained_variance(x, x_hat) == pytest.approx(0.5)
    assert M.mse(x, x_hat) == pytest.approx(1 / 4)
    assert M.sse_per_token(x, x_hat) == pytest.approx(1 / 2)
    assert M.cosine_similarity(x, x_hat) == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert M.l2_ratio(x, x_hat) == pytest.approx((math.sqrt(2) + 1) / 2)
    # γ = E‖x̂‖² / E[x·x̂] = (2 + 9) / (1 + 9)
    assert M.relative_reconstruction_bias(x, x_hat) == pytest.approx(11 / 10)


def test_shrinkage_and_orthogonal():
    x = torch.randn(40, 7)
    assert M.relative_reconstruction_bias(x, 0.5 * x) == pytest.approx(0.5)
    assert M.l2_ratio(x, 0.5 * x) == pytest.approx(0.5)
    assert M.cosine_similarity(x, 0.5 * x) == pytest.approx(1.0)
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert M.cosine_similarity(x, x.flip(-1)) == pytest.approx(0.0)
    assert M.cosine_similarity(x, torch.zeros_like(x)) == 0.0  # zero vector: 0, not NaN


def test_sparsity_metrics():
    f = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.5]])
    assert M.l0(f) == pytest.approx(6 / 4)
    d = M.feature_density(f)
    assert d.tolist() == [0.25, 0.0, 1.0, 0.25]
    assert M.dead_fraction(d) == pytest.approx(0.25)
    assert M.dense_fraction(d, 0.1) == pytest.approx(0.75)
    assert M.dense_fraction(d, 0.5) == pytest.approx(0.25)
    h = M.density_histogram(d, n_tokens=4, bins=2)  # range [log10(1/4), 0]; two live at 1/4, one at 1
    assert h.dead == 1 and h.counts == [2, 1] and h.edges[0] == pytest.approx(math.log10(0.25))


def test_downstream_formulas():
    assert M.ce_loss_recovered(ce_clean=2.0, ce_sae=3.0, ce_ablated=5.0) == pytest.approx(2 / 3)
    assert M.ce_loss_recovered(2.0, 2.0, 5.0) == 1.0 and M.ce_loss_recovered(2.0, 5.0, 5.0) == 0.0
    assert math.isnan(M.ce_loss_recovered(2.0, 3.0, 2.0))
    assert M.kl_score(kl_sae=1.0, kl_ablated=4.0) == pytest.approx(0.75)
    a, b = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    ref = F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(M.kl_divergence(a, b), ref, atol=1e-6, rtol=1e-5)
    assert M.kl_divergence(a, a).abs().max() < 1e-6
    tokens = torch.randint(0, 11, (3, 5))
    ref = F.cross_entropy(a[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1), reduction="none").view(3, 4)
    torch.testing.assert_close(M.cross_entropy(a, tokens), ref)


def test_streaming_equals_one_shot_under_large_mean():
    g = torch.Generator().manual_seed(0)
    x = 1e3 + torch.randn(300, 16, generator=g, dtype=torch.float64)  # variance is tiny relative to ‖mean‖²
    x_hat = x + 0.3 * torch.randn(300, 16, generator=g, dtype=torch.float64)
    f = torch.relu(torch.randn(300, 32, generator=g))
    s = M.ReconstructionStats(d_sae=32)
    for lo, hi in [(0, 7), (7, 100), (100, 101), (101, 300)]:
        s.update(x[lo:hi], x_hat[lo:hi], f[lo:hi])
    # independent float64 reference, written out here
    sst = ((x - x.mean(0)) ** 2).sum()
    ref_ev = 1 - ((x - x_hat) ** 2).sum() / sst
    assert s.explained_variance == pytest.approx(float(ref_ev), abs=1e-9)
    assert s.explained_variance == pytest.approx(M.explained_variance(x, x_hat), abs=1e-9)
    assert s.mse == pytest.approx(M.mse(x, x_hat), rel=1e-12)
    assert s.sse_per_token == pytest.approx(M.sse_per_token(x, x_hat), rel=1e-12)
    assert s.cosine_similarity == pytest.approx(M.cosine_similarity(x, x_hat), rel=1e-12)
    assert s.l2_ratio == pytest.approx(M.l2_ratio(x, x_hat), rel=1e-12)
    assert s.relative_reconstruction_bias == pytest.approx(M.relative_reconstruction_bias(x, x_hat), rel=1e-12)
    assert s.l0 == pytest.approx(M.l0(f), rel=1e-12)
    torch.testing.assert_close(s.feature_density, M.feature_density(f))
    torch.testing.assert_close(s.mean, x.mean(0))


def test_explained_variance_matches_saelens_calculator():
    from sae_lens.evals import ExplainedVarianceCalculator

    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 24, generator=g) * 2 + torch.randn(24, generator=g)
    x_hat = 0.8 * x + 0.2 * torch.randn(500, 24, generator=g)
    calc = ExplainedVarianceCalculator()
    for chunk in range(0, 500, 128):
        calc.add_batch(sae_output=x_hat[chunk:chunk + 128], hidden_acts=x[chunk:chunk + 128])
    assert M.explained_variance(x, x_hat) == pytest.approx(calc.compute(), abs=1e-6)


# ----------------------------------------------------------------------------------------------------------
# the whole evaluation on the GPT-2-shaped offline fixture
# ----------------------------------------------------------------------------------------------------------

HOOK = "blocks.3.hook_resid_pre"
LAYER = 3
CTX = 32
N_TOKENS = 8 * CTX
BOS = 0  # the fixture tokenizer's <|endoftext|> (BOS = EOS)

_WORDS = ("the king said that a man of war would come to the house and speak of peace , while her "
          "brother went out into the night . what is it ? I know not , my lord ; but they were all there "
          "with the old prince and the young count , who laughed .").split()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    paras = []
    for _ in range(60):
        n = int(torch.randint(8, 60, (1,), generator=g))
        paras.append(" ".join(_WORDS[int(i)] for i in torch.randint(0, len(_WORDS), (n,), generator=g)))
    path = tmp_path_factory.mktemp("evaltext") / "sample.txt"
    path.write_text("\n\n".join(paras), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lm(gpt2_hub):
    from saescope.lm import LanguageModel

    return LanguageModel.from_pretrained(gpt2_hub)


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    """A ReLU SAE, d_in 64 -> d_sae 256: tied random directions scaled so that x̂ ≈ x (‖x‖ ≈ 0.24 at this hook):
    EV ≈ 0.6, L0 ≈ 65, CE recovered ≈ 0.77; 16 features forced dead."""
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    cfg = SAEConfig(architecture="relu", d_in=64, d_sae=256,
                    metadata=SAEMetadata(model_name="gpt2", hook_name=HOOK, prepend_bos=True, context_size=CTX))
    sae = SAE(cfg, seed=3)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        sae.W_dec.copy_(0.45 * sae.W_enc.T)
        sae.W_enc.add_(0.02 * torch.randn(sae.W_enc.shape, generator=g))
        sae.b_enc.copy_(-0.02 * (1 + 0.2 * torch.randn(256, generator=g)))
        sae.b_enc[:16] = -1e4
        sae.b_dec.copy_(0.005 * torch.randn(64, generator=g))
    out = tmp_path_factory.mktemp("sae") / "relu"
    sae.save(out)
    return out


@pytest.fixture(scope="module")
def sae(sae_dir):
    from saescope.sae import SAE

    return SAE.load(sae_dir)


def _reference(gpt2_dir, sae, ids):
    """Independent recomputation: plain HF GPT-2 forward, a torch forward pre-hook on block 3, float64 maths."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    W_enc, b_enc, W_dec, b_dec = (getattr(sae, n).detach().double() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))

    def sae_fwd(h):
        f = torch.relu(h.double() @ W_enc + b_enc)
        return f, f @ W_dec + b_dec

    mask = ids != BOS

    def forward(edit=None):
        seen = {}

        def pre(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            seen["x"] = h.detach().clone()
            if edit is None:
                return None
            new = edit(h).to(h.dtype)
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        handle = hf.transformer.h[LAYER].register_forward_pre_hook(pre, with_kwargs=True)
        try:
            with torch.no_grad():
                logits = hf(input_ids=ids).logits.double()
        finally:
            handle.remove()
        return logits, seen["x"]

    clean, x = forward()
    xs = x[mask].double()
    f, x_hat = sae_fwd(xs)
    mu = xs.mean(0)
    out = {"tokens": int(mask.sum()),
           "explained_variance": float(1 - ((xs - x_hat) ** 2).sum() / ((xs - mu) ** 2).sum()),
           "l0": float((f > 0).sum(-1).double().mean()),
           "mse": float(((xs - x_hat) ** 2).mean()),
           "cosine_similarity": float(((xs * x_hat).sum(-1) / (xs.norm(dim=-1) * x_hat.norm(dim=-1))).mean()),
           "l2_ratio": float((x_hat.norm(dim=-1) / xs.norm(dim=-1)).mean()),
           "relative_reconstruction_bias": float((x_hat ** 2).sum() / (xs * x_hat).sum()),
           "dead_fraction": float(((f > 0).sum(0) == 0).double().mean())}

    def ce(logits):
        logp = torch.log_softmax(logits[:, :-1], -1)
        return -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)[mask[:, :-1]].mean()

    def kl(logits):
        lp, lq = torch.log_softmax(clean, -1), torch.log_softmax(logits, -1)
        return (lp.exp() * (lp - lq)).sum(-1)[mask].mean()

    sae_logits, _ = forward(lambda h: torch.where(mask[..., None], sae_fwd(h)[1], h.double()))
    zero_logits, _ = forward(lambda h: torch.zeros_like(h))
    mean_logits, _ = forward(lambda h: mu.expand_as(h))
    c0, cs, cz, cm = ce(clean), ce(sae_logits), ce(zero_logits), ce(mean_logits)
    out.update(ce_loss_clean=float(c0), ce_loss_sae=float(cs), ce_loss_zero_ablation=float(cz),
               ce_loss_mean_ablation=float(cm),
               ce_loss_recovered=float((cz - cs) / (cz - c0)), ce_loss_recovered_mean_ablation=float((cm - cs) / (cm - c0)),
               kl_score=float(1 - kl(sae_logits) / kl(zero_logits)),
               kl_score_mean_ablation=float(1 - kl(sae_logits) / kl(mean_logits)))
    return out


@pytest.fixture(scope="module")
def cli_result(gpt2_hub, sae_dir, text_file):
    import contextlib
    import io
    import json

    from saescope.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["eval", "--model", gpt2_hub, "--sae", str(sae_dir), "--dataset", str(text_file),
                     "--tokens", str(N_TOKENS), "--context-size", str(CTX), "--batch-size", "8", "--json"])
    assert code == 0
    return json.loads(buf.getvalue())


def test_cli_eval_equals_independent_recomputation(cli_result, lm, sae, gpt2_dir, text_file):
    from saescope.evals.downstream import _token_contexts

    for key in ("l0", "explained_variance", "mse", "cosine_similarity", "ce_loss_recovered", "kl_score",
                "dead_fraction", "tokens"):
        assert key in cli_result
    # the contexts the CLI evaluated (token construction is shared; every metric below is recomputed)
    ids = _token_contexts(lm, str(text_file), N_TOKENS // CTX, CTX, True, 0)
    assert ids.shape == (N_TOKENS // CTX, CTX) and bool((ids[:, 0] == BOS).all())
    ref = _reference(gpt2_dir, sae, ids)
    assert cli_result["contexts"] == ids.shape[0]
    assert cli_result["tokens"] == ref["tokens"]
    for key, value in ref.items():
        assert cli_result[key] == pytest.approx(value, abs=2e-5, rel=1e-4), key
    # the fixture is meant to exercise non-trivial values, not the edge cases
    assert 0.2 < ref["explained_variance"] < 0.99 and 0.05 < ref["ce_loss_recovered"] < 0.999
    assert ref["dead_fraction"] >= 16 / 256


class _Store:
    """The one method SAELens's eval functions need from an ActivationsStore: batches of token contexts."""

    def __init__(self, ids, batch):
        self.batches = [ids[i:i + batch] for i in range(0, len(ids), batch)]
        self.i = 0

    def get_batch_tokens(self, n):
        out = self.batches[self.i]
        self.i += 1
        return out


def test_matches_saelens_evals(cli_result, lm, sae, gpt2_dir, text_file):
    """SAELens 6.54 evals on a TransformerLens model of the same weights. Definitions coincide for: L0, explained
    variance, SSE per token (their "mse"), cosine similarity, L2 ratio, relative reconstruction bias (one batch),
    CE loss score / KL score against zero-ablation, feature density. Mean-ablation is saescope's own."""
    from sae_lens.evals import get_downstream_reconstruction_metrics, get_sparsity_and_variance_metrics
    from sae_lens.saes.sae import SAEMetadata as SLMeta
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.training.activation_scaler import ActivationScaler
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    from saescope.evals.downstream import _token_contexts

    hf = GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    tl_cfg = HookedTransformerConfig(n_layers=12, d_model=64, n_ctx=128, d_head=16, n_heads=4, d_mlp=256,
                                     d_vocab=4096, act_fn="gelu_new", normalization_type="LN", device="cpu")
    tl = HookedTransformer(tl_cfg)
    missing, unexpected = tl.load_state_dict(convert_gpt2_weights(hf, tl_cfg), strict=False)
    assert not unexpected and all(k.endswith(("IGNORE", "mask", "b_U")) for k in missing), missing
    tl.eval()

    sl_sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=256, apply_b_dec_to_input=False,
                                           metadata=SLMeta(hook_name=HOOK)))
    sl_sae.load_state_dict({n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")})

    ids = _token_contexts(lm, str(text_file), N_TOKENS // CTX, CTX, True, 0)  # what `saescope eval` evaluated
    ours = cli_result
    down = get_downstream_reconstruction_metrics(
        sl_sae, tl, _Store(ids, 4), ActivationScaler(), compute_kl=True, compute_ce_loss=True,
        n_batches=2, eval_batch_size_prompts=4, ignore_tokens=[BOS])
    recon, feats = get_sparsity_and_variance_metrics(
        sl_sae, tl, _Store(ids, len(ids)), ActivationScaler(), n_batches=1, compute_l2_norms=True,
        compute_sparsity_metrics=True, compute_variance_metrics=True, compute_featurewise_density_statistics=True,
        eval_batch_size_prompts=len(ids), model_kwargs={}, ignore_tokens=[BOS])
    pairs = {
        "ce_loss_recovered": down["ce_loss_score"], "kl_score": down["kl_div_score"],
        "ce_loss_clean": down["ce_loss_without_sae"], "ce_loss_sae": down["ce_loss_with_sae"],
        "ce_loss_zero_ablation": down["ce_loss_with_ablation"], "kl_sae": down["kl_div_with_sae"],
        "kl_zero_ablation": down["kl_div_with_ablation"],
        "l0": recon["l0"], "explained_variance": recon["explained_variance"], "sse_per_token": recon["mse"],
        "cosine_similarity": recon["cossim"], "l2_ratio": recon["l2_ratio"],
        "relative_reconstruction_bias": recon["relative_reconstruction_bias"],
        "dead_fraction": float((torch.tensor(feats["feature_density"]) == 0).double().mean()),
    }
    density = torch.tensor(feats["feature_density"], dtype=torch.float64)
    pairs["dense_fraction_1pct"] = float((density > 0.01).double().mean())
    pairs["dense_fraction_10pct"] = float((density > 0.1).double().mean())
    for key, theirs in pairs.items():
        assert ours[key] == pytest.approx(theirs, abs=5e-5, rel=2e-4), key
    # where definitions differ: SAELens's per-token "explained_variance_legacy" is not the explained variance
    assert abs(recon["explained_variance_legacy"] - ours["explained_variance"]) > 1e-3


def _run_cli(argv):
    import contextlib
    import io

    from saescope.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_several_saes_and_plots(gpt2_hub, sae_dir, text_file, tmp_path):
    import json

    png, dens = tmp_path / "tradeoff.png", tmp_path / "density.png"
    code, out, err = _run_cli(["eval", "--model", gpt2_hub, "--sae", str(sae_dir), "--sae", str(sae_dir),
                               "--dataset", str(text_file), "--tokens", "64", "--context-size", str(CTX),
                               "--no-downstream", "--json", "--plot", str(png), "--density-plot", str(dens)])
    assert code == 0, err
    results = json.loads(out)
    assert isinstance(results, list) and len(results) == 2
    assert results[0]["l0"] == results[1]["l0"] and results[0]["ce_loss_recovered"] is None  # NaN -> null
    assert results[0]["tokens"] == 2 * (CTX - 1)
    for p in (png, dens):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write left no temp file


def test_plot_rejects_bad_path(tmp_path):
    from saescope.errors import InputError
    from saescope.evals import plot_l0_vs_ev

    with pytest.raises(InputError, match="must end in .png"):
        plot_l0_vs_ev([{"sae": "a", "l0": 3.0, "explained_variance": 0.5}], tmp_path / "x.jpg")


def test_bad_inputs_are_one_line_errors(gpt2_hub, sae_dir, lm, sae, text_file, tmp_path):
    from saescope.errors import ConfigError, NumericsError
    from saescope.evals import evaluate_sae
    from saescope.sae import SAE

    code, out, err = _run_cli(["eval", "--model", gpt2_hub, "--sae", str(sae_dir), "--dataset",
                               str(tmp_path / "missing.txt"), "--tokens", "64", "--json"])
    last = err.strip().splitlines()[-1]  # (transformers may draw a weight-loading bar before it)
    assert code == 2 and last.startswith("error: ") and "missing.txt" in last and "Traceback" not in err
    code, out, err = _run_cli(["eval", "--model", gpt2_hub, "--sae", str(sae_dir), "--dataset", str(text_file),
                               "--plot", str(tmp_path / "plot.jpg")])
    assert code == 2 and err.strip().splitlines()[-1] == f"error: plot path {tmp_path / 'plot.jpg'} must end in .png"
    ids = torch.randint(1, 4096, (2, 16))
    ids[:, 0] = BOS
    with pytest.raises(ConfigError, match="d_in=64 does not match the width 256"):
        evaluate_sae(lm, sae, ids, tokens=32, hook="blocks.3.mlp.hook_post", downstream=False)
    bad = SAE.load(sae_dir)
    with torch.no_grad():
        bad.b_dec[0] = float("nan")
    with pytest.raises(NumericsError, match="NaN"):
        evaluate_sae(lm, bad, ids, tokens=32, downstream=False)


def _identity_sae(d_in, hook, head=None):
    """ReLU SAE with W_enc = [I, -I], W_dec = [I; -I]: x̂ = relu(x) - relu(-x) = x exactly."""
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    sae = SAE(SAEConfig(architecture="relu", d_in=d_in, d_sae=2 * d_in,
                        metadata=SAEMetadata(hook_name=hook, hook_head_index=head)))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.mark.parametrize("hook,d_in,head", [("blocks.5.hook_resid_post", 64, None), ("blocks.2.attn.hook_z", 64, None),
                                             ("blocks.2.attn.hook_z", 16, 1)])
def test_exact_reconstruction_recovers_everything(lm, hook, d_in, head):
    from saescope.evals import evaluate_sae

    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 4096, (4, 16), generator=g)
    ids[:, 0] = BOS
    r = evaluate_sae(lm, _identity_sae(d_in, hook, head), ids, tokens=64, batch_size=3)
    assert r.tokens == 4 * 15 and r.ce_tokens == 4 * 14
    assert r.explained_variance == pytest.approx(1.0, abs=1e-6) and r.mse < 1e-12
    assert r.ce_loss_recovered == pytest.approx(1.0, abs=1e-5)
    assert r.ce_loss_recovered_mean_ablation == pytest.approx(1.0, abs=1e-4)
    assert r.kl_sae < 1e-7 and r.kl_score == pytest.approx(1.0, abs=1e-5)
    assert r.ce_loss_zero_ablation != pytest.approx(r.ce_loss_clean, abs=1e-4)  # the ablations do act
    assert r.l0 == pytest.approx(d_in, abs=0.5)  # every coordinate is non-zero in one of the two halves


def test_cli_table_output(gpt2_hub, sae_dir, text_file):
    code, out, err = _run_cli(["eval", "--model", gpt2_hub, "--sae", str(sae_dir), "--dataset", str(text_file),
                               "--tokens", "64", "--context-size", "16", "--no-downstream"])
    assert code == 0, err
    lines = dict(line.strip().rsplit(None, 1) for line in out.splitlines()[1:])
    assert lines["tokens"] == str(4 * 15) and lines["CE recovered (zero abl.)"] == "n/a"
    assert -1.0 < float(lines["explained variance"]) <= 1.0
