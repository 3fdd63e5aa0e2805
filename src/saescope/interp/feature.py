"""Everything known about one feature: logit lens, top-activating contexts, label, Neuronpedia URL."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from .. import display
from ..site import LENS, attach, load_labels
from ..site import logit_lens as _lens

log = logging.getLogger(__name__)

NEURONPEDIA = display.NEURONPEDIA


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
    promoted: list[TokenScore]          # logit lens (``saescope.site.LENS``): top tokens
    suppressed: list[TokenScore]        # most negative
    logit_lens_note: str | None         # what the lens applies, or why there is none
    contexts: list[dict] | None         # top-activating contexts from the feature store, when one is given
    contexts_note: str | None           # why there are no contexts, when there are none
    density: float | None               # firing frequency (store, else the SAE's log_sparsity)
    decoder_norm: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"index": self.index, "hook": self.hook, "label": self.label, "neuronpedia_url": self.neuronpedia_url,
                "promoted": [vars(t) for t in self.promoted], "suppressed": [vars(t) for t in self.suppressed],
                "logit_lens": LENS if self.promoted else None, "logit_lens_note": self.logit_lens_note,
                "contexts": self.contexts, "contexts_note": self.contexts_note, "density": self.density,
                "decoder_norm": self.decoder_norm, **self.extra}

    def _repr_html_(self) -> str:
        return display.render_feature_info(self)


def neuronpedia_url(sae, index: int) -> str | None:
    """``https://www.neuronpedia.org/{neuronpedia_id}/{index}`` when the SAE's metadata has a neuronpedia_id."""
    npid = sae.cfg.metadata.neuronpedia_id
    return f"{NEURONPEDIA}/{npid.strip('/')}/{index}" if npid else None


def logit_lens(lm, sae, index: int, k: int = 10) -> tuple[list[TokenScore], list[TokenScore]]:
    """Top promoted / suppressed tokens of feature ``index`` through the one logit lens (``saescope.site``):
    its decoder direction read as the unembedding reads the residual stream. Needs a decoder that writes in
    the residual basis (``attach(lm, sae).in_residual_basis``)."""
    lens = _lens(lm, sae.feature_directions(index).detach(), k)

    def rows(vals, ids):
        return [TokenScore(lm.to_string(torch.tensor([i])), int(i), float(v)) for v, i in zip(vals.tolist(), ids.tolist())]

    return rows(lens.pos_values[0], lens.pos_ids[0]), rows(lens.neg_values[0], lens.neg_ids[0])


def top_contexts(store, index: int, n: int = 10, note: str | None = None) -> tuple[list[dict] | None, str | None, dict]:
    """Top-activating contexts of ``index`` from a feature store (any object with ``get(index)`` returning a record
    with ``top``, ``density``...), already checked to belong to this SAE. -> (contexts or None, note, statistics).
    ``note``: why there is no store, when the caller knows."""
    if store is None:
        return None, note or ("no feature statistics (features.sqlite) given for this SAE; build them with "
                              "`saescope dashboard` and pass store=FeatureStore.for_sae(sae)"), {}
    rec = store.get(index)
    if rec is None:
        return None, f"the feature store has no statistics for feature {index}", {}
    extra = {"stats": {"density": rec.density, "mean_active": rec.mean_active, "max": rec.max, "n_active": rec.n_active},
             "label": rec.label}
    return [e.to_dict() for e in rec.top[:n]], None, extra


def feature_info(lm, sae, feature: int, k: int = 10, n_contexts: int = 10, store=None,
                 store_note: str | None = None) -> FeatureInfo:
    """Logit lens (``k`` promoted/suppressed tokens), top contexts (from ``store``, a FeatureStore of this SAE;
    ``store_note`` says why there is none), label, density and Neuronpedia URL of ``feature``."""
    att = attach(lm, sae)
    index = att.check_feature(feature)
    promoted, suppressed, note = [], [], None
    if att.has_logit_lens:
        promoted, suppressed = logit_lens(lm, sae, index, k)
    elif att.in_residual_basis:
        note = f"no logit lens: the final norm of {lm.name} follows no known convention"
    else:
        note = f"no logit lens: {att.hook_out} is not in the residual stream's basis"
    contexts, contexts_note, extra = top_contexts(store, index, n_contexts, store_note)
    density = extra.get("stats", {}).get("density")
    if density is None and getattr(sae, "log_sparsity", None) is not None:
        value = float(sae.log_sparsity.reshape(-1)[index])
        density = 10.0 ** value if math.isfinite(value) else 0.0
    norm = float(sae.feature_directions(index)[0].detach().norm())
    label = load_labels(sae).get(index, extra.pop("label", None))
    return FeatureInfo(index, att.hook_out, label, neuronpedia_url(sae, index), promoted, suppressed, note, contexts,
                       contexts_note, density, norm, extra)


__all__ = ["FeatureInfo", "TokenScore", "feature_info", "logit_lens", "neuronpedia_url", "top_contexts"]
