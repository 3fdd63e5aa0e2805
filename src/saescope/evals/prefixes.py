"""Per-prefix metrics of a Matryoshka SAE: each nested prefix ``[0, w)`` of its latents is a dictionary of its
own (``cfg.matryoshka_widths``), evaluated as an SAE of width ``w`` with the same encoder rows, decoder rows,
biases and thresholds (the latents beyond ``w`` switched off)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass
class PrefixResult:
    """The metrics of one Matryoshka prefix (NaN where downstream passes were skipped)."""

    width: int
    l0: float
    explained_variance: float
    ce_loss_recovered: float
    kl_score: float
    dead_fraction: float

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}


_PER_LATENT = ("W_enc", "b_enc", "threshold", "b_gate", "b_mag", "r_mag")


def prefix_sae(sae, width: int):
    """The SAE made of latents ``[0, width)`` of ``sae``: same dtype, device and metadata; ``W_dec[:width]``."""
    from ..sae import SAE
    from ..sae.model import param_shapes

    if not 0 < width <= sae.d_sae:
        raise ConfigError(f"prefix width {width} must be within 1..d_sae={sae.d_sae}")
    cfg = sae.cfg.replace(d_sae=width, matryoshka_widths=None,
                          k=None if sae.cfg.k is None else min(sae.cfg.k, width))
    state = {}
    for name in param_shapes(cfg):
        t = getattr(sae, name).detach()
        if name == "W_enc":
            t = t[:, :width]
        elif name in _PER_LATENT or name == "W_dec":
            t = t[:width]
        state[name] = t
    out = SAE.from_state_dict(cfg, state, device=sae.device, dtype=sae.dtype, source=f"prefix {width}")
    out.path = sae.path
    return out


@torch.no_grad()
def evaluate_prefixes(evaluate, lm, sae, source, **kwargs) -> list[PrefixResult]:
    """``evaluate(lm, prefix_sae, source, **kwargs)`` (``evaluate_sae``) for every width but the last, whose
    metrics are the SAE's own. Returns one row per inner prefix, narrowest first."""
    rows = []
    for w in (sae.cfg.matryoshka_widths or ())[:-1]:
        r = evaluate(lm, prefix_sae(sae, w), source, **kwargs)
        rows.append(PrefixResult(w, r.l0, r.explained_variance, r.ce_loss_recovered, r.kl_score, r.dead_fraction))
    return rows
