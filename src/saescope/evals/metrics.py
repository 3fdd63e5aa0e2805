"""Reconstruction and downstream metrics on plain tensors: no model, no SAE, no I/O.

Conventions (every function takes any leading batch dimensions; they are flattened into N tokens):

    x       [..., d_in]    the activation that entered the SAE (raw hook space)
    x_hat   [..., d_in]    the SAE reconstruction
    f       [..., d_sae]   feature activations

Definitions, aggregated over *all* evaluated tokens (never a mean of per-batch ratios):

    L0                 mean over tokens of #{i : f_i != 0}
    explained variance 1 - Σ_t ‖x_t - x̂_t‖² / Σ_t ‖x_t - μ‖²,   μ = mean of x over the evaluated tokens
                       (total variance about the mean, summed over dimensions; a single ratio of sums;
                       equals SAELens ≥ 6.x ``explained_variance``, not its per-token ``explained_variance_legacy``)
    FVU                1 - explained variance (fraction of variance unexplained)
    MSE                mean over tokens and dimensions of (x - x̂)²   (torch ``F.mse_loss``)
    SSE per token      mean over tokens of ‖x - x̂‖²                 (SAELens's ``mse``)
    cosine similarity  mean over tokens of x·x̂ / (‖x‖ ‖x̂‖)            (0 where either norm is 0)
    L2 ratio           mean over tokens of ‖x̂‖ / ‖x‖                  (tokens with ‖x‖ < 1e-4 divide by 1, as SAELens)
    relative reconstruction bias
                       γ = E‖x̂‖² / E[x·x̂], the minimiser of E‖x̂/γ - x‖² (Rajamanoharan et al. 2024,
                       "Improving Dictionary Learning with Gated SAEs", eq. 10). γ < 1: shrinkage.
    CE loss recovered  (CE_ablated - CE_sae) / (CE_ablated - CE_clean)
    KL score           1 - KL_sae / KL_ablated, KL = mean over tokens of KL(p_clean ‖ p_patched)
    feature density    per feature, fraction of evaluated tokens on which it fired (f != 0)
    dead fraction      fraction of features with density 0;  dense fractions: density > 1e-2, > 1e-1

The streaming accumulators (`ReconstructionStats`, `DownstreamStats`) use float64 sums and Chan's pairwise
update for the variance, so batching never changes a result beyond rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "l0", "explained_variance", "fvu", "mse", "sse_per_token", "cosine_similarity", "l2_ratio",
    "relative_reconstruction_bias", "ce_loss_recovered", "kl_score", "kl_divergence", "cross_entropy",
    "feature_density", "dead_fraction", "dense_fraction", "density_histogram", "DensityHistogram",
    "ReconstructionStats", "DownstreamStats",
]

_L2_RATIO_MIN_NORM = 1e-4


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).to(torch.float64)


def _check_pair(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != x_hat.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} must have the same shape")
    return _flat(x), _flat(x_hat)


def l0(f: torch.Tensor) -> float:
    """Mean number of non-zero features per token. ``[..., d_sae] -> float``."""
    return float((f != 0).sum(-1).to(torch.float64).mean())


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖²`` over all tokens. ``[..., d], [..., d] -> float``.

    The mean is taken over the tokens (one vector μ [d]); the variance is summed over dimensions.
    A constant x (zero variance) gives 1.0 for an exact reconstruction and 0.0 otherwise."""
    x, x_hat = _check_pair(x, x_hat)
    sse = (x - x_hat).pow(2).sum()
    sst = (x - x.mean(0)).pow(2).sum()
    return _ev(float(sse), float(sst))


def _ev(sse: float, sst: float) -> float:
    if sst <= 0.0:
        return 1.0 if sse <= 0.0 else 0.0
    return 1.0 - sse / sst


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained, ``1 - explained_variance``. ``[..., d], [..., d] -> float``."""
    return 1.0 - explained_variance(x, x_hat)


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over tokens and dimensions of ``(x - x̂)²``. ``[..., d], [..., d] -> float``."""
    x, x_hat = _check_pair(x, x_hat)
    return float((x - x_hat).pow(2).mean())


def sse_per_token(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over tokens of ``‖x - x̂‖²`` (SAELens's ``mse``). ``[..., d], [..., d] -> float``."""
    x, x_hat = _check_pair(x, x_hat)
    return float((x - x_hat).pow(2).sum(-1).mean())


def _cos_per_token(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    denom = x.norm(dim=-1) * x_hat.norm(dim=-1)
    dot = (x * x_hat).sum(-1)
    return torch.where(denom > 0, dot / denom.clamp_min(1e-300), torch.zeros_like(dot))


def cosine_similarity(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over tokens of ``x·x̂ / (‖x‖‖x̂‖)`` (0 for a zero vector). ``[..., d], [..., d] -> float``."""
    x, x_hat = _check_pair(x, x_hat)
    return float(_cos_per_token(x, x_hat).mean())


def _l2_ratio_per_token(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    nx = x.norm(dim=-1)
    nx = torch.where(nx.abs() < _L2_RATIO_MIN_NORM, torch.ones_like(nx), nx)
    return x_hat.norm(dim=-1) / nx


def l2_ratio(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over tokens of ``‖x̂‖ / ‖x‖``. ``[..., d], [..., d] -> float``."""
    x, x_hat = _check_pair(x, x_hat)
    return float(_l2_ratio_per_token(x, x_hat).mean())


def relative_reconstruction_bias(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``γ = E‖x̂‖² / E[x·x̂]``: 1 is unbiased, < 1 means the SAE shrinks. ``[..., d], [..., d] -> float``."""
    x, x_hat = _check_pair(x, x_hat)
    return _safe_div(float(x_hat.pow(2).sum()), float((x * x_hat).sum()))


def _safe_div(a: float, b: float) -> float:
    return a / b if b != 0 else math.nan


def ce_loss_recovered(ce_clean: float, ce_sae: float, ce_ablated: float) -> float:
    """``(CE_ablated - CE_sae) / (CE_ablated - CE_clean)``: 1 = no loss increase, 0 = as bad as ablation.
    NaN when the ablation does not change the loss."""
    return _safe_div(ce_ablated - ce_sae, ce_ablated - ce_clean)


def kl_score(kl_sae: float, kl_ablated: float) -> float:
    """``1 - KL_sae / KL_ablated`` (KL from the clean distribution). NaN when ``KL_ablated`` is 0."""
    return 1.0 - kl_sae / kl_ablated if kl_ablated != 0 else math.nan


def kl_divergence(clean_logits: torch.Tensor, new_logits: torch.Tensor) -> torch.Tensor:
    """Per-token ``KL(p_clean ‖ p_new) = Σ_v p_clean (log p_clean - log p_new)``. ``[..., V], [..., V] -> [...]``."""
    lp_clean = F.log_softmax(clean_logits.float(), dim=-1)
    lp_new = F.log_softmax(new_logits.float(), dim=-1)
    return (lp_clean.exp() * (lp_clean - lp_new)).sum(-1)


def cross_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-position next-token loss ``-log p(tokens[:, t+1] | ≤ t)``. ``[b, pos, V], [b, pos] -> [b, pos-1]``."""
    lp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return -lp.gather(-1, tokens[:, 1:, None].to(lp.device)).squeeze(-1)


def feature_density(f: torch.Tensor) -> torch.Tensor:
    """Fraction of tokens on which each feature is non-zero. ``[..., d_sae] -> [d_sae]`` (float64)."""
    f = f.reshape(-1, f.shape[-1])
    return (f != 0).sum(0).to(torch.float64) / max(f.shape[0], 1)


def dead_fraction(density: torch.Tensor) -> float:
    """Fraction of features that never fired. ``[d_sae] -> float``."""
    return float((density == 0).to(torch.float64).mean())


def dense_fraction(density: torch.Tensor, threshold: float) -> float:
    """Fraction of features firing on more than ``threshold`` of the tokens. ``[d_sae] -> float``."""
    return float((density > threshold).to(torch.float64).mean())


@dataclass(frozen=True)
class DensityHistogram:
    """Histogram of log10(feature density) over the live features; ``dead`` counts the never-firing ones.
    ``counts[i]`` features have ``edges[i] <= log10(density) < edges[i+1]`` (the last bin includes 0)."""

    edges: list[float]
    counts: list[int]
    dead: int

    def to_dict(self) -> dict:
        return {"edges": list(self.edges), "counts": list(self.counts), "dead": self.dead}


def density_histogram(density: torch.Tensor, n_tokens: int | None = None, bins: int = 40) -> DensityHistogram:
    """Histogram of ``log10(density)`` for live features. ``[d_sae] -> DensityHistogram``.

    The range is [log10(1 / n_tokens), 0] (the smallest and largest possible non-zero densities);
    without ``n_tokens`` it spans the observed live densities."""
    density = density.to(torch.float64).flatten()
    live = density[density > 0]
    dead = int((density == 0).sum())
    if n_tokens:
        lo = math.log10(1.0 / n_tokens)
    else:
        lo = float(live.min().log10()) if live.numel() else -1.0
    hi = 0.0
    if hi - lo < 1e-9:
        lo = hi - 1.0
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    logd = live.log10().clamp(lo, hi)
    idx = torch.bucketize(logd, edges, right=True).sub_(1).clamp_(0, bins - 1)
    counts = torch.bincount(idx, minlength=bins)
    return DensityHistogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts], dead=dead)


class ReconstructionStats:
    """Streaming accumulator of every reconstruction metric above, over batches of tokens.

    ``update(x [..., d_in], x_hat [..., d_in], f [..., d_sae])``; the properties return the metrics over all
    tokens seen so far, identical (to float64 rounding) to the one-shot functions on the concatenation."""

    def __init__(self, d_sae: int | None = None):
        self.n = 0
        self._mean: torch.Tensor | None = None  # running mean of x [d_in] (float64)
        self._m2 = 0.0          # Σ‖x - mean‖²
        self._sse = 0.0         # Σ‖x - x̂‖²
        self._d_in = 0
        self._cos = 0.0
        self._l2r = 0.0
        self._xhat_sq = 0.0
        self._dot = 0.0
        self._l0 = 0.0
        self._l1 = 0.0
        self._fires: torch.Tensor | None = torch.zeros(d_sae, dtype=torch.float64) if d_sae else None

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor | None = None) -> "ReconstructionStats":
        x, x_hat = _check_pair(x, x_hat)
        n_b = x.shape[0]
        if n_b == 0:
            return self
        self._d_in = x.shape[1]
        mean_b = x.mean(0)
        m2_b = float((x - mean_b).pow(2).sum())
        if self._mean is None:
            self._mean, self._m2 = mean_b.cpu(), m2_b
        else:  # Chan et al.'s pairwise combination of (count, mean, M2)
            n = self.n + n_b
            delta = mean_b.cpu() - self._mean
            self._m2 += m2_b + float(delta.pow(2).sum()) * self.n * n_b / n
            self._mean = self._mean + delta * (n_b / n)
        self.n += n_b
        self._sse += float((x - x_hat).pow(2).sum())
        self._cos += float(_cos_per_token(x, x_hat).sum())
        self._l2r += float(_l2_ratio_per_token(x, x_hat).sum())
        self._xhat_sq += float(x_hat.pow(2).sum())
        self._dot += float((x * x_hat).sum())
        if f is not None:
            f = f.reshape(-1, f.shape[-1])
            if f.shape[0] != n_b:
                raise ValueError(f"f has {f.shape[0]} tokens but x has {n_b}")
            nz = f != 0
            self._l0 += float(nz.sum())
            self._l1 += float(f.abs().to(torch.float64).sum())
            fires = nz.sum(0).to(device="cpu", dtype=torch.float64)
            self._fires = fires if self._fires is None else self._fires + fires
        return self

    @property
    def explained_variance(self) -> float:
        return _ev(self._sse, self._m2)

    @property
    def fvu(self) -> float:
        return 1.0 - self.explained_variance

    @property
    def mse(self) -> float:
        return self._sse / max(self.n * self._d_in, 1)

    @property
    def sse_per_token(self) -> float:
        return self._sse / max(self.n, 1)

    @property
    def cosine_similarity(self) -> float:
        return self._cos / max(self.n, 1)

    @property
    def l2_ratio(self) -> float:
        return self._l2r / max(self.n, 1)

    @property
    def relative_reconstruction_bias(self) -> float:
        return _safe_div(self._xhat_sq, self._dot)

    @property
    def l0(self) -> float:
        return self._l0 / max(self.n, 1)

    @property
    def l1(self) -> float:
        return self._l1 / max(self.n, 1)

    @property
    def mean(self) -> torch.Tensor:
        """Mean of x over the tokens seen. ``[d_in]`` (float64, CPU)."""
        if self._mean is None:
            raise ValueError("no tokens seen")
        return self._mean

    @property
    def feature_density(self) -> torch.Tensor:
        """``[d_sae]`` fraction of tokens on which each feature fired."""
        if self._fires is None:
            raise ValueError("no feature activations seen")
        return self._fires / max(self.n, 1)


class DownstreamStats:
    """Streaming sums of per-token CE losses and KL divergences, keyed by run name
    (e.g. ``"clean"``, ``"sae"``, ``"zero"``, ``"mean"``). Means are over all tokens added."""

    def __init__(self):
        self._sum: dict[str, float] = {}
        self._n: dict[str, int] = {}

    def add(self, key: str, values: torch.Tensor) -> None:
        """Add per-token values ``[...]`` under ``key``."""
        self._sum[key] = self._sum.get(key, 0.0) + float(values.to(torch.float64).sum())
        self._n[key] = self._n.get(key, 0) + values.numel()

    def mean(self, key: str) -> float:
        n = self._n.get(key, 0)
        return self._sum[key] / n if n else math.nan

    def count(self, key: str) -> int:
        return self._n.get(key, 0)
