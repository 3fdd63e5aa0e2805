"""Reading: which SAE features fire on which tokens.

    read_features(lm, sae, texts, top_k)   -> [ReadResult]      top-k features per token, L0, % active
    feature_trace(lm, sae, text, features) -> Trace             chosen features' activations per token
    features_on_token(lm, sae, texts, tok) -> TokenFeatureStats which features fire on one token across texts

All go through ``sae.encode`` on the raw hook activation, so the SAE's input transform (e.g. TransformerLens's
centering for GPT-2 SAEs) is applied exactly as in training. Texts are tokenized with the SAE's
``metadata.prepend_bos`` unless ``prepend_bos`` is given; a prepended BOS is an ordinary row of the result.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..errors import InputError
from ..progress import progress
from .compat import Site, check_feature, check_finite, check_fits, sae_prepend_bos, tokens_for
from .labels import load_labels

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


@torch.no_grad()
def encode_tokens(lm, sae, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Feature activations of token ids: LongTensor ``[b, pos]`` -> ``[b, pos, d_sae]`` (on the SAE's device)."""
    site = Site.of(sae)
    acts = lm.run(ids, capture=site.hook, attention_mask=attention_mask)[site.hook]
    check_finite(acts, f"model {lm.name} at {site.hook}")
    x = site.to_sae(acts).to(device=sae.device, dtype=sae.dtype)
    return check_finite(sae.encode(x), f"the SAE on {site.hook} (feature activations)")


def _as_list(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    if not texts:
        raise InputError("no texts given; pass at least one text")
    return texts


def _encode_texts(lm, sae, texts: list[str], prepend_bos, batch_size: int = 16):
    """Yield (text, ids [pos], f [pos, d_sae]) per text, running the model in right-padded batches."""
    token_lists = [tokens_for(lm, sae, t, prepend_bos)[0] for t in texts]
    for start in progress(range(0, len(texts), batch_size), desc="reading", unit="batch"):
        chunk = token_lists[start:start + batch_size]
        width = max(len(t) for t in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, t in enumerate(chunk):
            ids[row, :len(t)] = t
            mask[row, :len(t)] = 1
        f = encode_tokens(lm, sae, ids.to(lm.device), mask.to(lm.device) if len(chunk) > 1 else None)
        for row, t in enumerate(chunk):
            yield texts[start + row], t, f[row, :len(t)].float().cpu()


def read_features(lm, sae, texts, top_k: int = 5, prepend_bos: bool | None = None,
                  labels: dict[int, str] | None = None) -> list[ReadResult]:
    """Top-k active features per token for each text.

    ``texts``: str or list[str]. Per token: up to ``top_k`` features with activation > 0 in descending order,
    the token's L0; per text: mean L0 and the % of features active anywhere. ``labels`` defaults to the
    ``labels.json`` beside the SAE.
    """
    check_fits(lm, sae)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise InputError(f"top_k must be an integer between 1 and {MAX_TOP_K}, got {top_k!r}")
    labels = load_labels(sae) if labels is None else labels
    pb = sae_prepend_bos(lm, sae) if prepend_bos is None else prepend_bos
    hook = Site.of(sae).hook
    results = []
    for text, ids, f in _encode_texts(lm, sae, _as_list(texts), prepend_bos):
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
        results.append(ReadResult(text, hook, rows, pb, float(l0.float().mean()),
                                  100.0 * float(active.any(0).float().mean())))
    return results


def feature_trace(lm, sae, text: str, features, prepend_bos: bool | None = None) -> Trace:
    """Activations of the chosen ``features`` (int or list of ints) on every token of ``text`` -> Trace ``[pos, n]``."""
    check_fits(lm, sae)
    feats = [features] if isinstance(features, int) else list(features)
    if not feats:
        raise InputError("no features given; pass at least one feature index")
    feats = [check_feature(sae, i) for i in feats]
    (_, ids, f), = _encode_texts(lm, sae, [text], prepend_bos)
    return Trace(text, Site.of(sae).hook, lm.to_str_tokens(ids), feats, f[:, feats], load_labels(sae))


def single_token_id(lm, token) -> tuple[int, str]:
    """A token given as an id or as a string that is exactly one token -> (id, string)."""
    if isinstance(token, bool):
        raise InputError(f"token must be a string or a token id, got {token!r}")
    if isinstance(token, int):
        vocab = lm.info.d_vocab
        if not 0 <= token < vocab:
            raise InputError(f"token id {token} is out of range (vocabulary size {vocab})")
        return token, lm.to_string(torch.tensor([token]))
    if not isinstance(token, str) or token == "":
        raise InputError("token is empty; give one token, e.g. ' the'")
    ids = lm.to_tokens(token, prepend_bos=False).reshape(-1)
    if ids.numel() != 1:
        raise InputError(f"{token!r} is {ids.numel()} tokens, not one: {lm.to_str_tokens(ids)}; give a single token "
                         "(mind the leading space)")
    return int(ids[0]), token


def features_on_token(lm, sae, texts, token, top_k: int = 10, prepend_bos: bool | None = None) -> TokenFeatureStats:
    """Which features fire on ``token`` (one token, str or id) wherever it occurs in ``texts``.

    A monosemanticity check: a feature that fires on (nearly) every occurrence, and little elsewhere, tracks it.
    """
    check_fits(lm, sae)
    token_id, token_str = single_token_id(lm, token)
    texts = _as_list(texts)
    rows = []
    n_texts = 0
    for _, ids, f in _encode_texts(lm, sae, texts, prepend_bos):
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
