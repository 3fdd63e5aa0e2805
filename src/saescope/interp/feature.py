"""Everything known about one feature: logit lens, top-activating contexts, label, Neuronpedia URL."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .attribute import _DLA_HOOK
from .compat import Site, check_feature, check_fits
from .labels import load_labels

log = logging.getLogger(__name__)

NEURONPEDIA = "https://www.neuronpedia.org"
STATS_FILE = "features.sqlite"


@dataclass
class TokenScore:
    token: str
    token_id: int
    value: float


@dataclass
class FeatureInfo:
    index: int
    hook: str
    label: str | None
    neuronpedia_url: str | None
    promoted: list[TokenScore]          # logit lens: top tokens of direction . W_U (through the final norm's gain)
    suppressed: list[TokenScore]        # most negative
    logit_lens_note: str | None         # why there is no logit lens, when there is none
    contexts: list[dict] | None         # top-activating contexts from features.sqlite, when it exists
    contexts_note: str | None           # why there are no contexts, when there are none
    density: float | None               # firing frequency from the SAE's log_sparsity, when present
    decoder_norm: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"index": self.index, "hook": self.hook, "label": self.label, "neuronpedia_url": self.neuronpedia_url,
                "promoted": [vars(t) for t in self.promoted], "suppressed": [vars(t) for t in self.suppressed],
                "logit_lens_note": self.logit_lens_note, "contexts": self.contexts,
                "contexts_note": self.contexts_note, "density": self.density, "decoder_norm": self.decoder_norm,
                **self.extra}


def neuronpedia_url(sae, index: int) -> str | None:
    """``https://www.neuronpedia.org/{neuronpedia_id}/{index}`` when the SAE's metadata has a neuronpedia_id."""
    npid = sae.cfg.metadata.neuronpedia_id
    return f"{NEURONPEDIA}/{npid.strip('/')}/{index}" if npid else None


@torch.no_grad()
def logit_lens_topk(directions: torch.Tensor, W_U: torch.Tensor, k: int, chunk: int = 1024):
    """Top-k positive and negative logit contributions per feature.

    directions ``[d_sae, d_model]`` @ W_U ``[d_model, d_vocab]`` in chunks -> (pos_val, pos_idx, neg_val, neg_idx),
    each ``[d_sae, k]``; negatives are the most negative values, ascending.
    """
    D = directions.shape[0]
    k = min(k, W_U.shape[1])
    out = [torch.empty(D, k), torch.empty(D, k, dtype=torch.long), torch.empty(D, k), torch.empty(D, k, dtype=torch.long)]
    W = W_U.float()
    for s in range(0, D, chunk):
        logits = directions[s:s + chunk].float().to(W.device) @ W
        pv, pi = logits.topk(k, dim=1)
        nv, ni = logits.topk(k, dim=1, largest=False)
        for o, x in zip(out, (pv, pi, nv, ni)):
            o[s:s + chunk] = x.cpu()
    return tuple(out)


def logit_lens(lm, sae, index: int, k: int = 10, through_norm: bool = True) -> tuple[list[TokenScore], list[TokenScore]]:
    """Top promoted / suppressed tokens of feature ``index``: ``d_f . W_U`` with ``d_f`` the raw-space decoder
    direction. ``through_norm``: first apply the final norm's centring (LayerNorm) and gain, as the residual
    stream is read (its scale only rescales all scores, so the ranking ignores it)."""
    d = sae.feature_directions(index)[0].double().to(lm.device)
    if through_norm:
        norm = lm.final_norm()
        if isinstance(norm, torch.nn.LayerNorm) or type(norm).__name__ == "LayerNorm":
            d = d - d.mean()
        weight = getattr(norm, "weight", None)
        if weight is not None:
            d = d * weight.detach().double()
    scores = d @ lm.unembed_matrix().detach().double()                                    # [d_vocab]
    k = min(k, scores.numel())
    top = torch.topk(scores, k)
    bottom = torch.topk(-scores, k)

    def rows(vals, ids, sign):
        return [TokenScore(lm.to_string(torch.tensor([i])), int(i), sign * float(v)) for v, i in zip(vals.tolist(), ids.tolist())]

    return rows(top.values, top.indices, 1.0), rows(bottom.values, bottom.indices, -1.0)


def _stats_file(sae) -> Path | None:
    path = getattr(sae, "path", None)
    if path is None:
        return None
    file = Path(path) / STATS_FILE
    return file if file.is_file() else None


def top_contexts(sae, index: int, n: int = 10) -> tuple[list[dict] | None, str | None, dict]:
    """Top-activating contexts of ``index`` from ``features.sqlite`` beside the SAE (``saescope.report.store``).

    -> (contexts or None, note when None, extra statistics). A context is ``{"tokens", "ids", "acts", "center",
    "value"}``: token strings, this feature's activation per token, the index of the peak token, its value.
    """
    file = _stats_file(sae)
    if file is None:
        where = f" in {sae.path}" if getattr(sae, "path", None) else ""
        return None, f"no feature statistics ({STATS_FILE}){where}; build them with `saescope dashboard`", {}
    try:
        from ..report.store import FeatureStore

        with FeatureStore.for_sae(sae, file) as store:
            rec = store.get(index)
    except Exception as exc:  # a broken statistics file must not hide the rest of the feature info
        log.warning("could not read contexts from %s: %s", file, exc)
        return None, f"could not read {file}: {exc}", {}
    if rec is None:
        return None, f"{file} has no statistics for feature {index}", {}
    extra = {"stats": {"density": rec.density, "mean_active": rec.mean_active, "max": rec.max, "n_active": rec.n_active}}
    return [e.to_dict() for e in rec.top[:n]], None, extra


def feature_info(lm, sae, feature: int, k: int = 10, n_contexts: int = 10) -> FeatureInfo:
    """Logit lens (``k`` promoted/suppressed tokens), top contexts, label, density and Neuronpedia URL of ``feature``."""
    check_fits(lm, sae)
    index = check_feature(sae, feature)
    site = Site.of(sae)
    promoted, suppressed, note = [], [], None
    if _DLA_HOOK.match(site.hook) and sae.d_in == lm.info.d_model:
        promoted, suppressed = logit_lens(lm, sae, index, k)
    else:
        note = f"no logit lens: {site.hook} is not in the residual stream's basis"
    contexts, contexts_note, extra = top_contexts(sae, index, n_contexts)
    density = extra.get("stats", {}).get("density")
    if density is None and getattr(sae, "log_sparsity", None) is not None:
        value = float(sae.log_sparsity.reshape(-1)[index])
        density = 10.0 ** value if math.isfinite(value) else 0.0
    norm = float(sae.feature_directions(index)[0].detach().norm())
    return FeatureInfo(index, site.hook, load_labels(sae).get(index), neuronpedia_url(sae, index), promoted,
                       suppressed, note, contexts, contexts_note, density, norm, extra)
