"""Evaluation of SAEs: reconstruction metrics on tensors (`metrics`) and downstream CE / KL with the LM.

    from saescope.evals import evaluate_sae
    result = evaluate_sae(lm, sae, "corpus.txt", tokens=20_000)
    result.explained_variance, result.ce_loss_recovered, result.to_dict()
"""
from __future__ import annotations

from .metrics import (
    DensityHistogram,
    DownstreamStats,
    ReconstructionStats,
    ce_loss_recovered,
    cosine_similarity,
    cross_entropy,
    dead_fraction,
    dense_fraction,
    density_histogram,
    explained_variance,
    feature_density,
    fvu,
    kl_divergence,
    kl_score,
    l0,
    l2_ratio,
    mse,
    relative_reconstruction_bias,
    sse_per_token,
)

__all__ = [
    "evaluate_sae", "EvalResult", "plot_l0_vs_ev", "plot_density_histogram",
    "DensityHistogram", "DownstreamStats", "ReconstructionStats", "ce_loss_recovered", "cosine_similarity",
    "cross_entropy", "dead_fraction", "dense_fraction", "density_histogram", "explained_variance",
    "feature_density", "fvu", "kl_divergence", "kl_score", "l0", "l2_ratio", "mse",
    "relative_reconstruction_bias", "sse_per_token",
]


def __getattr__(name: str):  # the LM-facing parts import torch models lazily
    if name in ("evaluate_sae", "EvalResult"):
        from . import downstream

        return getattr(downstream, name)
    if name in ("plot_l0_vs_ev", "plot_density_histogram"):
        from . import plot

        return getattr(plot, name)
    raise AttributeError(f"module 'saescope.evals' has no attribute {name!r}")
