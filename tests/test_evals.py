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
