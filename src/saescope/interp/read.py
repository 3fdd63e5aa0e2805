"""Reading: which SAE features fire on which tokens.

    read_features(lm, sae, texts, top_k)   -> [ReadResult]      top-k features per token, L0, % active
    feature_trace(lm, sae, text, features) -> Trace             chosen features' activations per token
    features_on_token(lm, sae, texts, tok) -> TokenFeatureStats which features fire on one token across texts

All read features through the attach layer (``saescope.site.attach``): the SAE's input transform (e.g.
TransformerLens's centering for GPT-2 SAEs) and any model convention are applied exactly as in training, and
texts are tokenized with the SAE's ``prepend_bos``; a prepended BOS is an ordinary row of the result. For a
transcoder, the features are those its encoder reads at its input hook.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from .. import display
from ..errors import InputError
from ..site import attach, load_labels, single_token_id

log = logging.getLogger(__name__)

MAX_TOP_K = 1000


@dataclass
class FeatureActivation:
    index: int
    activation: float
    label: str | None = None

    def to_dict(self) -> dict:
        d = {"index": self.index, "activation": self.activation}
        if self.label is not None:
            d["label"] = self.label
        return d


@dataclass
class TokenRow:
    position: int
    token: str
    token_id: int
    features: list[FeatureActivation]   # up to top_k with activation > 0, descending
    l0: int                             # number of active features at this position

    def to_dict(self) -> dict:
        return {"position": self.position, "token": self.token, "features": [f.to_dict() for f in self.features],
                "l0": self.l0}


@dataclass
class ReadResult:
    text: str
    hook: str
    tokens: list[TokenRow]
    prepend_bos: bool
    mean_l0: float                      # mean active features per token
    percent_active: float               # % of the SAE's features active on at least one token of the text

    def to_dict(self) -> dict:
        return {"text": self.text, "hook": self.hook, "prepend_bos": self.prepend_bos, "mean_l0": self.mean_l0,
                "percent_active": self.percent_active, "tokens": [t.to_dict() for t in self.tokens]}

    def _repr_html_(self) -> str:
        return display.render_read(self)


@dataclass
class Trace:
    text: str
    hook: str
    tokens: list[str]
    features: list[int]
    activations: torch.Tensor           # [pos, n_features]
    labels: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"text": self.text, "hook": self.hook, "tokens": self.tokens,
                "features": [{"index": i, "label": self.labels.get(i),
                              "activations": self.activations[:, j].tolist()} for j, i in enumerate(self.features)]}

    def _repr_html_(self) -> str:
        return display.render_trace(self)


@dataclass
class TokenFeatureStat:
    index: int
    fraction: float                     # share of the token's occurrences on which the feature fires
    mean_activation: float              # mean over all occurrences (0 where it does not fire)
    label: str | None = None


@dataclass
class TokenFeatureStats:
    token: str
    token_id: int
    occurrences: int
    texts: int
    features: list[TokenFeatureStat]    # descending by fraction, then mean activation

    def to_dict(self) -> dict:
        return {"token": self.token, "token_id": self.token_id, "occurrences": self.occurrences, "texts": self.texts,
                "features": [vars(f) for f in self.features]}

    def _repr_html_(self) -> str:
        return display.render_token_stats(self)


def _as_list(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    if not texts:
        raise InputError("no texts given; pass at least one text")
    return texts


def read_features(lm, sae, texts, top_k: int = 5, prepend_bos: bool | None = None,
                  labels: dict[int, str] | None = None) -> list[ReadResult]:
    """Top-k active features per token for each text.

    ``texts``: str or list[str]. Per token: up to ``top_k`` features with activation > 0 in descending order,
    the token's L0; per text: mean L0 and the % of features active anywhere. ``labels`` defaults to the
    ``labels.json`` beside the SAE.
    """
    att = _attached(lm, sae, prepend_bos)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise InputError(f"top_k must be an integer between 1 and {MAX_TOP_K}, got {top_k!r}")
    labels = load_labels(sae) if labels is None else labels
    results = []
    for text, ids, f in att.encode_texts(_as_list(texts)):
        k = min(top_k, f.shape[-1])
        vals, idx = torch.topk(f, k, dim=-1)
        strs = lm.to_str_tokens(ids)
        active = f > 0
        l0 = active.sum(-1)
        rows = []
        for p in range(f.shape[0]):
            feats = [FeatureActivation(int(i), float(v), labels.get(int(i)))
                     for v, i in zip(vals[p].tolist(), idx[p].tolist()) if v > 0]
            rows.append(TokenRow(p, strs[p], int(ids[p]), feats, int(l0[p])))
        results.append(ReadResult(text, att.hook, rows, att.prepend_bos, float(l0.float().mean()),
                                  100.0 * float(active.any(0).float().mean())))
    return results


def feature_trace(lm, sae, text: str, features, prepend_bos: bool | None = None) -> Trace:
    """Activations of the chosen ``features`` (int or list of ints) on every token of ``text`` -> Trace ``[pos, n]``."""
    att = _attached(lm, sae, prepend_bos)
    feats = [features] if isinstance(features, int) else list(features)
    if not feats:
        raise InputError("no features given; pass at least one feature index")
    feats = [att.check_feature(i) for i in feats]
    (_, ids, f), = att.encode_texts([text])
    return Trace(text, att.hook, lm.to_str_tokens(ids), feats, f[:, feats], load_labels(sae))


def features_on_token(lm, sae, texts, token, top_k: int = 10, prepend_bos: bool | None = None) -> TokenFeatureStats:
    """Which features fire on ``token`` (one token, str or id) wherever it occurs in ``texts``.

    A monosemanticity check: a feature that fires on (nearly) every occurrence, and little elsewhere, tracks it.
    """
    att = _attached(lm, sae, prepend_bos)
    token_id, token_str = single_token_id(lm, token)
    texts = _as_list(texts)
    rows = []
    n_texts = 0
    for _, ids, f in att.encode_texts(texts):
        hit = ids == token_id
        if hit.any():
            n_texts += 1
            rows.append(f[hit])
    if not rows:
        return TokenFeatureStats(token_str, token_id, 0, 0, [])
    acts = torch.cat(rows)                     # [occurrences, d_sae]
    frac = (acts > 0).float().mean(0)
    mean = acts.mean(0)
    order = sorted(torch.nonzero(frac > 0).flatten().tolist(), key=lambda i: (-float(frac[i]), -float(mean[i])))
    labels = load_labels(sae)
    stats = [TokenFeatureStat(i, float(frac[i]), float(mean[i]), labels.get(i)) for i in order[:top_k]]
    return TokenFeatureStats(token_str, token_id, acts.shape[0], n_texts, stats)


def _attached(lm, sae, prepend_bos: bool | None):
    """The attachment, with the caller's ``prepend_bos`` (when given) instead of the SAE's."""
    att = attach(lm, sae)
    return att if prepend_bos is None else dataclasses.replace(att, prepend_bos=bool(prepend_bos))
