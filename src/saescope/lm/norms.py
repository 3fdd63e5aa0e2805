"""What a LayerNorm / RMSNorm module computes, measured rather than assumed.

Every supported norm is ``out = x̂ * (w + offset) + b`` with ``x̂ = c / sqrt(mean(c²) + eps)``, where
``c = x - mean(x)`` for a LayerNorm and ``c = x`` for an RMSNorm; ``offset`` is 1 for the HF Gemma family's
``x̂ * (1 + w)``, else 0; ``b`` is 0 when the module has no bias. ``norm_facts`` names the convention by running
the module on two probe inputs (one small enough that ``eps`` matters) and keeping the candidate that reproduces
it, so a new family with another convention yields None instead of a silently wrong formula.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

_EPS_ATTRS = ("eps", "variance_epsilon", "epsilon")
_EPS_CONFIG = ("layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps", "norm_eps")


@dataclass(frozen=True)
class NormFacts:
    """``kind`` "layernorm" | "rmsnorm", ``offset`` 0.0 | 1.0, ``eps``: see the module docstring."""

    kind: str
    offset: float
    eps: float


def _param(module: torch.nn.Module, name: str) -> torch.Tensor | None:
    p = getattr(module, name, None)
    return p if isinstance(p, torch.Tensor) else None


def _eps(module: torch.nn.Module, config) -> float | None:
    for attr in _EPS_ATTRS:
        v = getattr(module, attr, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    for attr in _EPS_CONFIG:
        v = getattr(config, attr, None) if config is not None else None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def normalize(x: torch.Tensor, facts: NormFacts) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [..., d] -> (c [..., d], inv_scale [..., 1])`` in float32 (float64 stays float64); x̂ = c * inv_scale."""
    c = x.float() if x.dtype != torch.float64 else x
    if facts.kind == "layernorm":
        c = c - c.mean(-1, keepdim=True)
    return c, torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + facts.eps)


def affine(xhat: torch.Tensor, module, facts: NormFacts) -> torch.Tensor:
    """x̂ [..., d] -> x̂ * (w + offset) + b, computed in x̂'s dtype."""
    w, b = _param(module, "weight"), _param(module, "bias")
    out = xhat * (w.to(xhat.dtype) + facts.offset) if w is not None else xhat * (1.0 + facts.offset)
    return out + b.to(xhat.dtype) if b is not None else out


def _candidates(module: torch.nn.Module, eps: float) -> list[NormFacts]:
    layer_first = isinstance(module, torch.nn.LayerNorm) or _param(module, "bias") is not None
    kinds = ["layernorm", "rmsnorm"] if layer_first else ["rmsnorm", "layernorm"]
    return [NormFacts(k, off, eps) for k in kinds for off in (0.0, 1.0)]


@torch.no_grad()
def norm_facts(module: torch.nn.Module, d: int, config=None) -> NormFacts | None:
    """The convention ``module`` follows (width ``d``), or None when no candidate reproduces its output."""
    eps = _eps(module, config)
    if eps is None:
        return None
    w = _param(module, "weight")
    dtype, device = (w.dtype, w.device) if w is not None else (torch.float32, "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, d, generator=g, dtype=torch.float64) * 3 + 1
    probes = [x, x * (eps ** 0.5)]                      # the second one is where eps matters
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    try:
        outs = [module(p.to(device=device, dtype=dtype)).double().cpu() for p in probes]
    except Exception:      # a module that is not a plain x -> norm(x) function
        return None
    for cand in _candidates(module, eps):
        ok = True
        for p, y in zip(probes, outs):
            c, inv = normalize(p, cand)
            ref = affine(c * inv, _cpu_double(module), cand)
            ok = ok and float((ref - y).abs().max()) <= tol * max(float(y.abs().max()), 1e-30)
        if ok:
            return cand
    return None


def _cpu_double(module: torch.nn.Module) -> SimpleNamespace:
    """A float64 CPU copy of a norm module's weight and bias, for the reference computation."""
    w, b = _param(module, "weight"), _param(module, "bias")
    return SimpleNamespace(weight=w.detach().double().cpu() if w is not None else None,
                           bias=b.detach().double().cpu() if b is not None else None)
