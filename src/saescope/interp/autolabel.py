"""Automatic feature labels with no LLM: what a feature fires on, and what it promotes.

A label joins the tokens that carry most of the feature's activation mass over a corpus with the
tokens its decoder direction promotes through the unembedding (the logit lens), e.g.

    "Napoleon · Emperor · Bonaparte → army, troops"

Labels are written beside the SAE as ``labels.json`` (``{"<index>": "label"}``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .._io import atomic_write_text
from ..progress import progress
from .feature import logit_lens_topk


def _clean(token: str) -> str:
    text = token.replace("\n", "⏎").strip()
    return text if text else repr(token)


@torch.no_grad()
def activation_mass_by_token(lm, sae, contexts: torch.Tensor, batch_size: int = 64, exclude_bos: bool = True,
                             top: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per feature, the ``top`` token ids that carry the most activation mass over ``contexts``.

    contexts: LongTensor [n, ctx]. Returns (token_ids [d_sae, top], mass [d_sae, top], fires [d_sae]),
    where fires counts the tokens on which each feature was active; unused slots have token id -1.
    Accumulates sparse (feature, token) pairs, so memory scales with active entries, not d_sae × vocab.
    """
    hook = sae.cfg.metadata.hook_name
    vocab = lm.info.d_vocab
    keys, weights = [], []
    fires = torch.zeros(sae.d_sae, dtype=torch.long)
    for start in progress(range(0, len(contexts), batch_size), desc="labels", unit="batch"):
        ids = contexts[start:start + batch_size].to(lm.device)
        acts = lm.run(ids, capture=[hook])[hook]
        feats = sae.encode(acts.to(sae.dtype))  # [b, pos, d_sae]
        if exclude_bos and lm.info.bos_token_id is not None:
            feats = feats * (ids != lm.info.bos_token_id).unsqueeze(-1).to(feats.dtype)
        b, p, f = feats.nonzero(as_tuple=True)
        vals = feats[b, p, f]
        tok = ids[b, p]
        keys.append((f.cpu() * vocab + tok.cpu()))
        weights.append(vals.float().cpu())
        fires += torch.bincount(f.cpu(), minlength=sae.d_sae)
    key = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.long)
    weight = torch.cat(weights) if weights else torch.zeros(0)
    uniq, inverse = torch.unique(key, return_inverse=True)
    mass = torch.zeros(len(uniq)).index_add_(0, inverse, weight)
    feat, tok = uniq // vocab, uniq % vocab
    order = torch.argsort(mass, descending=True, stable=True)
    order = order[torch.argsort(feat[order], stable=True)]  # grouped by feature, heaviest first
    feat, tok, mass = feat[order], tok[order], mass[order]
    starts = torch.searchsorted(feat, torch.arange(sae.d_sae))
    out_tok = torch.full((sae.d_sae, top), -1, dtype=torch.long)
    out_mass = torch.zeros(sae.d_sae, top)
    if len(feat):
        for j in range(top):
            idx = (starts + j).clamp(max=len(feat) - 1)
            ok = ((starts + j) < len(feat)) & (feat[idx] == torch.arange(sae.d_sae))
            out_tok[ok, j] = tok[idx[ok]]
            out_mass[ok, j] = mass[idx[ok]]
    return out_tok, out_mass, fires


@torch.no_grad()
def logit_lens_top(lm, sae, top: int = 2) -> torch.Tensor:
    """Token ids each feature's decoder direction promotes most: [d_sae, top] (through W_U, no bias)."""
    return logit_lens_topk(sae.feature_directions().detach(), lm.unembed_matrix().detach(), top)[1]


def make_labels(lm, sae, contexts: torch.Tensor, batch_size: int = 64) -> dict[int, str]:
    """A short label for every feature (see the module docstring). Features that never fired are "dead"."""
    tok, _, fires = activation_mass_by_token(lm, sae, contexts, batch_size=batch_size)
    promoted = logit_lens_top(lm, sae)
    labels = {}
    for f in range(sae.d_sae):
        if fires[f] == 0:
            labels[f] = "dead"
            continue
        on = " · ".join(_clean(lm.to_string(torch.tensor([t]))) for t in tok[f].tolist() if t >= 0)
        to = ", ".join(_clean(lm.to_string(torch.tensor([t]))) for t in promoted[f].tolist())
        labels[f] = f"{on} → {to}"
    return labels


def save_labels(labels: dict[int, str], sae_dir: str | Path) -> Path:
    """Write labels.json beside an SAE, atomically."""
    path = Path(sae_dir) / "labels.json"
    atomic_write_text(path, json.dumps({str(k): v for k, v in sorted(labels.items())}, ensure_ascii=False, indent=0))
    return path
