"""The family-aware readout: final norm as each family computes it, unembedding, logit soft-cap; the one logit lens.

Every family ends ``logits = cap(N(r) @ W_U + b_U)`` with ``r`` the final residual stream,
``N(r) = (r - mean(r) [LayerNorm only]) / sqrt(mean(...)^2 + eps) * (w + offset) + b`` and
``cap(z) = c * tanh(z / c)`` when the model soft-caps its logits (Gemma-2), else the identity. ``offset`` is 1 for
Gemma-family RMSNorm (``x * (1 + w)``), 0 elsewhere. The facts come from the model layer (``ModelInfo``).

* ``Readout.frozen(r, target)``: with the norm's scale frozen at its value on ``r`` (standard direct logit
  attribution), the pre-cap logit ``z`` of ``target`` is linear in ``r``: ``z = g . r' + constant`` summed over
  any split ``r = sum r'``. ``Readout.check`` compares the frozen readout with the model's own logit, so a family
  the readout gets wrong is an error, never a silent wrong attribution.
* ``logit_lens``: a direction ``d`` in the residual basis read the way the residual is read: centred (LayerNorm),
  times the gain ``w + offset``, then ``@ W_U``. The norm's scale and the soft-cap are monotone for all tokens at
  once, so rankings are exact; values are in the units of ``d . W_U`` after the gain. Every surface (CLI, demo,
  dashboards, feature store, web app) uses this one definition: ``LENS`` names it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError, NumericsError

LENS = "final-norm gain (centred for LayerNorm) · W_U"


@dataclass(frozen=True)
class NormFacts:
    kind: str                     # "layernorm" | "rmsnorm"
    offset: float                 # gain = weight + offset
    eps: float
    softcap: float | None


def has_readout(lm) -> bool:
    """True when the model layer could tell how the final norm computes (``ModelInfo.final_norm_kind``)."""
    return lm.info.final_norm_kind in ("layernorm", "rmsnorm")


def norm_facts(lm) -> NormFacts:
    """The final-norm facts of ``lm``, as its model layer measured them (``ModelInfo``); a ConfigError when the
    final norm follows no known convention (then there is no readout to attribute through)."""
    info = lm.info
    if not has_readout(lm):
        raise ConfigError(f"the final norm of model {lm.name} ({info.family}) follows no known LayerNorm/RMSNorm "
                          "convention: direct logit attribution and the logit lens are not available")
    return NormFacts(info.final_norm_kind, float(info.final_norm_offset), float(info.final_norm_eps),
                     info.final_logit_softcap)


class Readout:
    """The final norm + unembedding of one model, in float64 (see the module docstring)."""

    def __init__(self, lm):
        self.lm = lm
        self.facts = norm_facts(lm)
        norm = lm.final_norm()
        w = getattr(norm, "weight", None)
        d = lm.info.d_model
        self.gain = (w.detach().double() if w is not None else torch.ones(d, dtype=torch.float64)) + self.facts.offset
        b = getattr(norm, "bias", None)
        self.bias = b.detach().double() if b is not None else None
        out = lm.hf_model.get_output_embeddings()
        ub = getattr(out, "bias", None)
        self.unembed_bias = ub.detach().double() if ub is not None else None

    def _w_u(self, target: int) -> torch.Tensor:
        return self.lm.unembed_matrix()[:, target].detach().double()

    def frozen(self, r: torch.Tensor, target: int) -> tuple[torch.Tensor, float]:
        """``r [d_model]`` -> ``(g [d_model], constant)`` with ``pre_cap_logit = g . r + constant`` at the frozen
        scale, and ``g . r'`` the direct contribution of any part ``r'`` of ``r``."""
        f = self.facts
        r = r.detach().double().cpu()
        u = self._w_u(target).cpu() * self.gain.cpu()
        if f.kind == "layernorm":
            scale = torch.sqrt(((r - r.mean()) ** 2).mean() + f.eps)
            g = (u - u.mean()) / scale
        else:
            scale = torch.sqrt((r ** 2).mean() + f.eps)
            g = u / scale
        constant = float(self.bias.cpu() @ self._w_u(target).cpu()) if self.bias is not None else 0.0
        if self.unembed_bias is not None:
            constant += float(self.unembed_bias[target])
        return g, constant

    def cap(self, z: float) -> float:
        """The model's logit from the pre-cap logit ``z``."""
        c = self.facts.softcap
        return c * math.tanh(z / c) if c else z

    def check(self, pre_cap: float, logit: float, where: str) -> None:
        """Raise unless the frozen readout reproduces the model's own ``logit`` (tolerance 1e-4 relative)."""
        got = self.cap(pre_cap)
        if not abs(got - logit) <= 1e-4 * max(1.0, abs(logit)):
            raise NumericsError(f"the readout of model {self.lm.name} ({self.lm.info.family}) does not reproduce its "
                                f"logit at {where} ({got:.6g} vs {logit:.6g}); this family's final norm is not "
                                "supported for attribution")

    def lens_directions(self, directions: torch.Tensor) -> torch.Tensor:
        """``[n, d_model]`` residual-basis directions -> the same directions as the unembedding reads them."""
        d = directions.detach().float()
        if self.facts.kind == "layernorm":
            d = d - d.mean(-1, keepdim=True)
        return d * self.gain.to(device=d.device, dtype=d.dtype)


@dataclass(frozen=True)
class LensTopK:
    """Top promoted / suppressed tokens per direction: values and token ids, each ``[n, k]`` (suppressed ascending)."""
    pos_values: torch.Tensor
    pos_ids: torch.Tensor
    neg_values: torch.Tensor
    neg_ids: torch.Tensor


@torch.no_grad()
def logit_lens(lm, directions: torch.Tensor, k: int, chunk: int = 1024, readout: Readout | None = None) -> LensTopK:
    """The one logit lens: ``[n, d_model]`` residual-basis directions -> top-k promoted and suppressed tokens,
    computed in chunks of ``chunk`` directions (never a full ``[n, d_vocab]`` matrix)."""
    readout = readout or Readout(lm)
    W_U = lm.unembed_matrix().detach().float()
    n = directions.shape[0]
    k = min(k, W_U.shape[1])
    out = [torch.empty(n, k), torch.empty(n, k, dtype=torch.long), torch.empty(n, k), torch.empty(n, k, dtype=torch.long)]
    for s in range(0, n, chunk):
        logits = readout.lens_directions(directions[s:s + chunk].to(W_U.device)) @ W_U
        pv, pi = logits.topk(k, dim=1)
        nv, ni = logits.topk(k, dim=1, largest=False)
        for o, x in zip(out, (pv, pi, nv, ni)):
            o[s:s + chunk] = x.cpu()
    return LensTopK(*out)


@torch.no_grad()
def lens_rank(lm, direction: torch.Tensor, token_id: int, readout: Readout | None = None) -> int:
    """Rank (1 = most promoted) of ``token_id`` in the logit lens of one residual-basis ``direction [d_model]``."""
    readout = readout or Readout(lm)
    W_U = lm.unembed_matrix().detach().float()
    scores = readout.lens_directions(direction.reshape(1, -1).to(W_U.device))[0] @ W_U
    return int((scores > scores[token_id]).sum()) + 1
