"""Feature statistics for every feature of an SAE in one streaming pass over a corpus.

    compute_feature_stats(lm, sae, source, config, out=None, resume=False) -> FeatureStats

One forward pass per batch of token contexts; the SAE's feature activations ``[B, T, d_sae]`` update running
accumulators for *all* features at once (no per-feature loop over data):

- top-k max-activating contexts: a running ``topk`` over tokens, per feature, merged batch by batch, keeping a
  window of ± ``window`` tokens and that feature's activation on each of them;
- interval samples: a weighted reservoir (Efraimidis-Spirakis keys ``log(u) / a`` over the active tokens, so higher
  activations are kept more often) from which examples are grouped into ``n_intervals`` equal activation intervals
  of ``[0, max]`` at the end, as Neuronpedia shows them;
- density (fraction of tokens where the feature is > 0), mean activation over all tokens and over active tokens,
  max activation;
- a histogram of the non-zero activations over fixed log-spaced bins ``[hist_min, hist_max]`` (values outside
  go to the first/last bin);
- top co-firing features: co-occurrence counts ``A^T A`` of the binary activity ``A [n, d_sae]`` of a token
  subsample, ranked by Jaccard index ``c_ij / (c_i + c_j - c_ij)``;
- logit lens: ``feature_directions() @ W_U`` (``[d_sae, d_in] @ [d_model, d_vocab]``), top positive/negative
  tokens, when the SAE reads the residual stream (d_in == d_model).

The running state is checkpointed into the store being built every ``checkpoint_every`` batches, so a killed run
resumes where it stopped (``resume=True``) and gives the same result as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch

from .._config import JsonConfig
from ..data import contexts_from
from ..interp.feature import logit_lens_topk as logit_lens
from ..errors import ConfigError, InputError
from ..progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatsConfig(JsonConfig):
    """How much data and how many examples. Defaults suit the bundled SAE over 200k tokens."""

    n_tokens: int = 200_000          # tokens read (contexts of context_size, the last one may overshoot)
    context_size: int = 128
    batch_size: int = 32             # contexts per forward pass
    top_k: int = 16                  # max-activating examples kept per feature
    window: int = 8                  # tokens kept either side of an example's token
    n_intervals: int = 5             # activation intervals for the interval samples
    samples_per_interval: int = 3
    reservoir: int = 32              # weighted reservoir size per feature (source of the interval samples)
    hist_bins: int = 40
    hist_min: float = 1e-3
    hist_max: float = 1e3
    logit_k: int = 10
    cofire_k: int = 8
    cofire_tokens: int = 8192        # token subsample for co-firing counts
    exclude_bos: bool = True         # BOS/EOS positions are not counted and never chosen as examples
    seed: int = 0
    checkpoint_every: int = 50       # batches between checkpoints (0 = never)

    def __post_init__(self):
        for name in ("n_tokens", "context_size", "batch_size", "top_k", "n_intervals", "reservoir", "hist_bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"StatsConfig.{name}: must be a positive integer, got {value!r}")
        for name in ("window", "samples_per_interval", "logit_k", "cofire_k", "cofire_tokens", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"StatsConfig.{name}: must be a non-negative integer, got {value!r}")
        if not (0 < self.hist_min < self.hist_max) or not math.isfinite(self.hist_max):
            raise ConfigError(f"StatsConfig.hist_min/hist_max: need 0 < hist_min < hist_max, got {self.hist_min}, {self.hist_max}")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def hist_edges(self) -> torch.Tensor:
        """``[hist_bins + 1]`` log-spaced bin edges."""
        return torch.logspace(math.log10(self.hist_min), math.log10(self.hist_max), self.hist_bins + 1, dtype=torch.float64)


_STATE_KEYS = ("count", "sum", "hist", "top_val", "top_tok", "top_act", "res_key", "res_val", "res_tok", "res_act",
               "co_rows", "co_cols", "counters")


class StatsAccumulator:
    """Running statistics of ``d_sae`` features. Pure tensor code: ``update`` takes what the model gives.

    ``update(tokens [B, T], f [B, T, d_sae], mask [B, T])``: ``mask`` marks the positions that count.
    """

    def __init__(self, d_sae: int, config: StatsConfig, device: torch.device | str = "cpu"):
        c = config
        self.cfg, self.d_sae, self.device = c, d_sae, torch.device(device)
        w = 2 * c.window + 1
        dev = self.device
        self.count = torch.zeros(d_sae, dtype=torch.int64, device=dev)
        self.sum = torch.zeros(d_sae, dtype=torch.float64, device=dev)
        self.hist = torch.zeros(d_sae, c.hist_bins, dtype=torch.int64, device=dev)
        self.top_val = torch.full((d_sae, c.top_k), -math.inf, device=dev)
        self.top_tok = torch.full((d_sae, c.top_k, w), -1, dtype=torch.int32, device=dev)
        self.top_act = torch.zeros(d_sae, c.top_k, w, device=dev)
        self.res_key = torch.full((d_sae, c.reservoir), -math.inf, device=dev)
        self.res_val = torch.zeros(d_sae, c.reservoir, device=dev)
        self.res_tok = torch.full((d_sae, c.reservoir, w), -1, dtype=torch.int32, device=dev)
        self.res_act = torch.zeros(d_sae, c.reservoir, w, device=dev)
        self.co_rows: list[torch.Tensor] = []
        self.co_cols: list[torch.Tensor] = []
        self.n_tokens = 0        # counted (masked-in) tokens
        self.n_co = 0            # tokens in the co-firing subsample
        self.batches = 0         # update() calls so far
        self.contexts = 0        # contexts consumed so far
        self._log_lo = math.log(c.hist_min)
        self._log_span = math.log(c.hist_max) - self._log_lo

    # ---------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, tokens: torch.Tensor, f: torch.Tensor, mask: torch.Tensor) -> None:
        """Fold one batch in. tokens ``[B, T]`` (long), f ``[B, T, d_sae]``, mask ``[B, T]`` (bool).

        ``f`` is modified in place (positions outside ``mask`` are set to 0); pass a copy to keep it.
        """
        c = self.cfg
        B, T, D = f.shape
        if D != self.d_sae:
            raise ValueError(f"expected {self.d_sae} features, got {D}")
        f = f.to(self.device, torch.float32)
        tokens = tokens.to(self.device)
        mask = mask.to(self.device, torch.bool)
        fm = f
        flat = fm.reshape(B * T, D)
        out = (~mask).reshape(-1).nonzero(as_tuple=True)[0]
        if out.numel():
            flat[out] = 0.0                                        # positions not counted (BOS, EOS) -> 0
        n = int(mask.sum())
        self.n_tokens += n

        # density, mean, histogram: over the non-zero entries only (sparse in practice)
        rows, cols = (flat > 0).nonzero(as_tuple=True)
        vals = flat[rows, cols]
        self.count += torch.bincount(cols, minlength=D)
        self.sum += torch.zeros(D, dtype=torch.float64, device=self.device).index_add_(0, cols, vals.double())
        if vals.numel():
            b = ((vals.log() - self._log_lo) * (c.hist_bins / self._log_span)).floor().clamp_(0, c.hist_bins - 1).long()
            self.hist += torch.bincount(cols * c.hist_bins + b, minlength=D * c.hist_bins).view(D, c.hist_bins)

        # top-k examples: running topk over tokens for every feature at once
        if vals.numel() * 8 < flat.numel():                        # sparse codes: top-k among the non-zeros
            bval, bidx = _segment_topk(cols, vals, rows, D, c.top_k)   # [D, top_k], -inf where fewer
        else:
            bval, bidx = flat.t().topk(min(c.top_k, B * T), dim=1)   # [D, k]; zeros never become examples
        gather = lambda feat, row: self._windows(tokens, flat, T, feat, row)   # noqa: E731
        self.top_val, (self.top_tok, self.top_act) = _merge(self.top_val, (self.top_tok, self.top_act),
                                                            bval, bidx, c.top_k, gather)

        # weighted reservoir over the active entries (keys log(u)/a; larger a -> larger key more often)
        if vals.numel():
            gen = torch.Generator(device=self.device)
            gen.manual_seed(c.seed * 1_000_003 + self.batches)
            u = torch.rand(vals.shape, generator=gen, device=self.device).clamp_min_(1e-12)
            keys = u.log() / vals
            rk, rrow = _segment_topk(cols, keys, rows, D, c.reservoir)   # [D, R] keys (-inf = empty), rows

            def gather_val(feat, row):
                tok, act = self._windows(tokens, flat, T, feat, row)
                return tok, act, flat[row, feat]

            self.res_key, (self.res_tok, self.res_act, self.res_val) = _merge(
                self.res_key, (self.res_tok, self.res_act, self.res_val), rk, rrow, c.reservoir, gather_val)

        # co-firing subsample: the first cofire_tokens counted tokens
        if self.n_co < c.cofire_tokens and n:
            take = min(c.cofire_tokens - self.n_co, n)
            idx = mask.reshape(-1).nonzero(as_tuple=True)[0][:take]
            sub = flat[idx] > 0                                    # [take, D]
            r, col = sub.nonzero(as_tuple=True)
            self.co_rows.append((r + self.n_co).to(torch.int64).cpu())
            self.co_cols.append(col.to(torch.int64).cpu())
            self.n_co += take
        self.batches += 1
        self.contexts += B

    def _windows(self, tokens: torch.Tensor, flat: torch.Tensor, T: int, feat: torch.Tensor, row: torch.Tensor):
        """Windows around flat token rows ``row [m]`` for features ``feat [m]`` ->
        (token ids [m, w] int32 (-1 outside the context), that feature's activations [m, w])."""
        W = self.cfg.window
        D = flat.shape[1]
        t = row % T
        off = torch.arange(-W, W + 1, device=self.device)
        pos = t[:, None] + off                                                      # [m, w]
        valid = (pos >= 0) & (pos < T)
        rows = (row - t)[:, None] + pos.clamp(0, T - 1)                             # flat row of each window token
        tok = torch.where(valid, tokens.reshape(-1)[rows], torch.full_like(rows, -1)).to(torch.int32)
        act = flat.reshape(-1)[rows * D + feat[:, None]]
        act = torch.where(valid, act, torch.zeros((), device=self.device))
        return tok, act

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, torch.Tensor]:
        rows = torch.cat(self.co_rows) if self.co_rows else torch.zeros(0, dtype=torch.int64)
        cols = torch.cat(self.co_cols) if self.co_cols else torch.zeros(0, dtype=torch.int64)
        counters = torch.tensor([self.n_tokens, self.n_co, self.batches, self.contexts], dtype=torch.int64)
        d = {k: getattr(self, k) for k in _STATE_KEYS[:10]}
        d.update(co_rows=rows, co_cols=cols, counters=counters)
        return {k: v.detach().cpu().contiguous() for k, v in d.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ConfigError(f"statistics checkpoint lacks {missing[0]!r}; delete the partial store and start again")
        for k in _STATE_KEYS[:10]:
            cur = getattr(self, k)
            if state[k].shape != cur.shape:
                raise ConfigError(f"statistics checkpoint {k!r} has shape {tuple(state[k].shape)}, expected {tuple(cur.shape)}; "
                                  f"it was made with another SAE or config")
            setattr(self, k, state[k].to(self.device, cur.dtype))
        self.co_rows, self.co_cols = [state["co_rows"]], [state["co_cols"]]
        self.n_tokens, self.n_co, self.batches, self.contexts = (int(x) for x in state["counters"].tolist())

    # ---------------------------------------------------------------- results
    def cofire(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top co-firing features -> (indices [D, k] (-1 = none), counts [D, k], jaccard [D, k])."""
        D, k = self.d_sae, self.cfg.cofire_k
        out_i = torch.full((D, k), -1, dtype=torch.int64)
        out_c = torch.zeros(D, k, dtype=torch.int64)
        out_j = torch.zeros(D, k)
        if k == 0 or self.n_co == 0:
            return out_i, out_c, out_j
        rows, cols = torch.cat(self.co_rows), torch.cat(self.co_cols)
        n = self.n_co
        ones = torch.ones(rows.numel())
        at = torch.sparse_coo_tensor(torch.stack([cols, rows]), ones, (D, n), check_invariants=False).coalesce()  # A^T
        per = torch.bincount(cols, minlength=D).float()                                     # c_i on the subsample
        chunk = max(1, min(D, (1 << 24) // max(n, 1)))
        kk = min(k, D - 1) if D > 1 else 0
        for s in range(0, D, chunk):
            e = min(D, s + chunk)
            sel = (cols >= s) & (cols < e)
            dense = torch.zeros(n, e - s)
            dense[rows[sel], cols[sel] - s] = 1.0                                           # A[:, s:e]
            co = torch.sparse.mm(at, dense).t()                                             # [e-s, D] counts
            co[torch.arange(e - s), torch.arange(s, e)] = 0                                 # not itself
            jac = co / (per[s:e, None] + per[None, :] - co).clamp_min(1)
            if kk == 0:
                continue
            jv, ji = jac.topk(kk, dim=1)
            cv = co.gather(1, ji)
            keep = cv > 0
            out_i[s:e, :kk] = torch.where(keep, ji, torch.full_like(ji, -1))
            out_c[s:e, :kk] = torch.where(keep, cv, torch.zeros_like(cv)).long()
            out_j[s:e, :kk] = torch.where(keep, jv, torch.zeros_like(jv))
        return out_i, out_c, out_j


def _merge(key, wins, bkey, brow, k, gather):
    """Keep the k largest of the running ``key [D, K]`` and this batch's candidates ``bkey [D, k']`` (at flat token
    rows ``brow [D, k']``). ``wins`` are per-entry tensors ``[D, K, ...]`` kept alongside; for the batch candidates
    that make it in, ``gather(feat [m], row [m])`` computes them (only for those: most candidates lose).
    -> (key [D, k], [wins])."""
    K = key.shape[1]
    top, sel = torch.cat([key, bkey], dim=1).topk(k, dim=1)
    run = sel.clamp(max=K - 1)
    out = []
    for w in wins:
        idx = run.view(*run.shape, *([1] * (w.dim() - 2))).expand(-1, -1, *w.shape[2:])
        out.append(w.gather(1, idx))
    fi, fj = (sel >= K).nonzero(as_tuple=True)
    if fi.numel():
        new = gather(fi, brow[fi, sel[fi, fj] - K])
        for o, x in zip(out, new):
            o[fi, fj] = x.to(o.dtype)
    return top, out


def _segment_topk(seg: torch.Tensor, key: torch.Tensor, payload: torch.Tensor, n_seg: int, k: int):
    """Per segment id (``seg [m]``), the k largest ``key`` -> (keys [n_seg, k] padded with -inf, payload [n_seg, k])."""
    order = torch.argsort(key, descending=True, stable=True)
    order = order[torch.argsort(seg[order], stable=True)]
    s = seg[order]
    starts = torch.searchsorted(s, torch.arange(n_seg, device=s.device))
    rank = torch.arange(s.numel(), device=s.device) - starts[s]
    keep = rank < k
    out_k = torch.full((n_seg, k), -math.inf, device=key.device)
    out_p = torch.zeros(n_seg, k, dtype=payload.dtype, device=key.device)
    out_k[s[keep], rank[keep]] = key[order][keep]
    out_p[s[keep], rank[keep]] = payload[order][keep]
    return out_k, out_p


# ---------------------------------------------------------------------- results


@dataclass
class Example:
    """One context: ``tokens`` (strings), ``ids``, this feature's ``acts`` per token, ``center`` = chosen token."""
    tokens: list[str]
    ids: list[int]
    acts: list[float]
    center: int
    value: float

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "ids": self.ids, "acts": self.acts, "center": self.center, "value": self.value}

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        return cls(list(d["tokens"]), list(d["ids"]), list(d["acts"]), int(d["center"]), float(d["value"]))


@dataclass
class FeatureRecord:
    """Everything known about one feature (a row of the store)."""
    index: int
    density: float                  # fraction of counted tokens where the feature is > 0
    mean: float                     # mean activation over all counted tokens
    mean_active: float              # mean over the tokens where it is > 0
    max: float
    n_active: int
    top: list[Example] = field(default_factory=list)
    intervals: list[dict] = field(default_factory=list)      # [{"lo", "hi", "examples": [Example]}]
    hist: list[int] = field(default_factory=list)            # counts per bin (edges in the store's meta)
    pos_logits: list[tuple[str, float]] = field(default_factory=list)
    neg_logits: list[tuple[str, float]] = field(default_factory=list)
    cofire: list[dict] = field(default_factory=list)         # [{"index", "count", "jaccard"}]
    label: str | None = None

    def to_dict(self) -> dict:
        d = {"index": self.index, "density": self.density, "mean": self.mean, "mean_active": self.mean_active,
             "max": self.max, "n_active": self.n_active, "hist": list(self.hist),
             "cofire": [dict(c) for c in self.cofire], "label": self.label}
        d["top"] = [e.to_dict() for e in self.top]
        d["intervals"] = [{"lo": iv["lo"], "hi": iv["hi"], "examples": [e.to_dict() for e in iv["examples"]]}
                          for iv in self.intervals]
        d["pos_logits"] = [list(x) for x in self.pos_logits]
        d["neg_logits"] = [list(x) for x in self.neg_logits]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureRecord":
        d = dict(d)
        d["top"] = [Example.from_dict(e) for e in d.get("top", [])]
        d["intervals"] = [{"lo": iv["lo"], "hi": iv["hi"], "examples": [Example.from_dict(e) for e in iv["examples"]]}
                          for iv in d.get("intervals", [])]
        d["pos_logits"] = [(s, float(v)) for s, v in d.get("pos_logits", [])]
        d["neg_logits"] = [(s, float(v)) for s, v in d.get("neg_logits", [])]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class FeatureStats:
    """The result of a pass: one record per feature plus what was measured."""
    records: list[FeatureRecord]
    n_tokens: int
    hist_edges: list[float]
    config: StatsConfig
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else float("nan")


def _round_sig(x: torch.Tensor, digits: int = 6) -> torch.Tensor:
    """Round to ``digits`` significant digits (keeps the JSON small without losing float32 meaning)."""
    x = x.detach().cpu().double()
    mag = torch.floor(torch.log10(x.abs().clamp_min(1e-30)))
    scale = 10.0 ** (digits - 1 - mag)
    return torch.where(x == 0, x, torch.round(x * scale) / scale)


def finalize(acc: StatsAccumulator, vocab: list[str] | None = None, logits=None, labels: dict[int, str] | None = None,
             seconds: float = 0.0, meta: dict | None = None) -> FeatureStats:
    """Turn the running state into one FeatureRecord per feature. ``logits`` = logit_lens(...) output or None."""
    c = acc.cfg
    D = acc.d_sae
    labels = labels or {}
    n = max(acc.n_tokens, 1)
    count = acc.count.cpu().tolist()
    sums = acc.sum.cpu().tolist()
    hist = acc.hist.cpu().tolist()
    top_val = acc.top_val.cpu()
    top_val_l, top_tok_l, top_act_l = top_val.tolist(), acc.top_tok.cpu().tolist(), _round_sig(acc.top_act).tolist()
    res_val_l, res_key_l = acc.res_val.cpu().tolist(), acc.res_key.cpu().tolist()
    res_tok_l, res_act_l = acc.res_tok.cpu().tolist(), _round_sig(acc.res_act).tolist()
    co_i, co_c, co_j = (x.tolist() for x in acc.cofire())
    if logits is not None:
        pv, pi, nv, ni = (x.tolist() for x in logits)
    W = c.window

    def tokstr(i: int) -> str:
        if vocab is not None and 0 <= i < len(vocab):
            return vocab[i]
        return f"<{i}>"

    def example(ids, acts, value) -> Example:
        keep = [j for j, t in enumerate(ids) if t >= 0]
        lo, hi = keep[0], keep[-1] + 1
        ids_, acts_ = ids[lo:hi], acts[lo:hi]
        return Example([tokstr(t) for t in ids_], list(ids_), acts_, W - lo, float(value))

    records = []
    for i in range(D):
        mx = max(top_val_l[i][0], 0.0) if count[i] else 0.0
        top = [example(top_tok_l[i][j], top_act_l[i][j], v) for j, v in enumerate(top_val_l[i]) if v > 0]
        intervals = []
        if count[i] and mx > 0 and c.samples_per_interval:
            samples = [(res_val_l[i][j], j) for j in range(c.reservoir) if math.isfinite(res_key_l[i][j]) and res_val_l[i][j] > 0]
            for q in range(c.n_intervals):
                lo, hi = mx * q / c.n_intervals, mx * (q + 1) / c.n_intervals
                inside = [(v, j) for v, j in samples if lo < v <= hi or (q == 0 and v == lo)]
                inside.sort(reverse=True)
                exs = [example(res_tok_l[i][j], res_act_l[i][j], v) for v, j in inside[:c.samples_per_interval]]
                intervals.append({"lo": lo, "hi": hi, "examples": exs})
        rec = FeatureRecord(
            index=i, density=count[i] / n, mean=sums[i] / n, mean_active=(sums[i] / count[i]) if count[i] else 0.0,
            max=mx, n_active=count[i], top=top, intervals=intervals, hist=hist[i],
            cofire=[{"index": a, "count": b, "jaccard": round(j, 5)} for a, b, j in zip(co_i[i], co_c[i], co_j[i]) if a >= 0],
            label=labels.get(i))
        if logits is not None:
            rec.pos_logits = [(tokstr(t), round(v, 5)) for v, t in zip(pv[i], pi[i])]
            rec.neg_logits = [(tokstr(t), round(v, 5)) for v, t in zip(nv[i], ni[i])]
        records.append(rec)
    return FeatureStats(records, acc.n_tokens, c.hist_edges().tolist(), c, seconds, dict(meta or {}))


# ---------------------------------------------------------------------- driving a model


def vocab_strings(lm) -> list[str]:
    """Decoded string of every token id of the model's tokenizer."""
    tok = lm.tokenizer
    n = int(getattr(lm.info, "d_vocab", 0) or len(tok))
    return [tok.decode([i]) for i in range(n)]


def _batches(contexts: Iterable[torch.Tensor], batch_size: int, n_contexts: int, skip: int) -> Iterator[torch.Tensor]:
    buf: list[torch.Tensor] = []
    for i, ctx in enumerate(contexts):
        if i >= n_contexts:
            break
        if i < skip:
            continue
        buf.append(ctx)
        if len(buf) == batch_size:
            yield torch.stack(buf)
            buf = []
    if buf:
        yield torch.stack(buf)


def sae_activations(lm, sae, tokens: torch.Tensor) -> torch.Tensor:
    """Feature activations for token ids ``[B, T]`` -> ``[B, T, d_sae]`` (the SAE's own input handling)."""
    from ..interp.compat import Site

    site = Site.of(sae)
    act = lm.run(tokens.to(lm.device), capture=site.hook)[site.hook]
    return sae.encode(site.to_sae(act).to(sae.dtype))


def compute_feature_stats(lm, sae, source, config: StatsConfig = StatsConfig(), out: str | Path | None = None,
                          resume: bool = False, labels: dict[int, str] | None = None) -> FeatureStats:
    """One streaming pass: statistics of every feature of ``sae`` on ``source``.

    source: a LongTensor ``[n, ctx]`` of token contexts, an iterable of texts, or a dataset name / local file
    (``saescope.data.iter_texts``). ``out``: the ``features.sqlite`` to write (built as ``<out>.partial`` with
    checkpoints, renamed when complete); ``resume`` continues a partial build with the same config.
    Returns the FeatureStats (also written to ``out`` when given).
    """
    from ..interp.compat import check_fits, sae_prepend_bos
    from . import store as store_mod

    check_fits(lm, sae)
    if sae.device.type == "cpu" and sae.dtype in (torch.float16, torch.bfloat16):
        import copy

        log.info("computing statistics with a float32 copy of the %s SAE (half precision is slow on the CPU)", sae.dtype)
        path, sae = sae.path, copy.deepcopy(sae).float()
        sae.path = path
    if labels is None:
        from ..interp.labels import load_labels
        labels = load_labels(sae)
    if isinstance(source, torch.Tensor) and source.dim() == 2:
        config = dataclasses.replace(config, context_size=int(source.shape[1]))
    n_contexts = math.ceil(config.n_tokens / config.context_size)
    acc = StatsAccumulator(sae.d_sae, config, device=sae.device)
    partial = None
    meta = describe(lm, sae)
    if out is not None:
        out = Path(out)
        partial = store_mod.PartialStore(out, config, meta, resume=resume)
        state = partial.load_checkpoint()
        if state is not None:
            acc.load_state_dict(state)
            log.info("resuming feature statistics after %d contexts", acc.contexts)
    bos = {t for t in (lm.info.bos_token_id, lm.info.eos_token_id) if t is not None} if config.exclude_bos else set()
    t0 = time.perf_counter()
    done_before = acc.contexts
    bar = progress(total=n_contexts * config.context_size, initial=done_before * config.context_size,
                   desc="feature stats", unit="tok", unit_scale=True)
    try:
        contexts = contexts_from(lm, source, config.context_size, prepend_bos=sae_prepend_bos(lm, sae),
                                 seed=config.seed)
        for batch in _batches(contexts, config.batch_size, n_contexts, done_before):
            with torch.no_grad():
                f = sae_activations(lm, sae, batch)
            mask = torch.ones(batch.shape, dtype=torch.bool)
            for t in bos:
                mask &= batch != t
            acc.update(batch, f, mask)
            bar.update(batch.numel())
            if partial is not None and config.checkpoint_every and acc.batches % config.checkpoint_every == 0:
                partial.save_checkpoint(acc.state_dict())
    finally:
        bar.close()
    if acc.contexts == 0:
        raise InputError(f"the text source gave no contexts of {config.context_size} tokens; use more text")
    seconds = time.perf_counter() - t0
    logits = None
    W_U = lm.unembed_matrix()
    if sae.d_in == W_U.shape[0] and config.logit_k:
        logits = logit_lens(sae.feature_directions().detach(), W_U.detach(), config.logit_k)
    meta.update(n_contexts=acc.contexts, seconds=seconds)
    stats = finalize(acc, vocab_strings(lm), logits, labels, seconds, meta)
    if partial is not None:
        partial.finish(stats)
    log.info("feature statistics: %d tokens in %.1fs (%.0f tok/s)", stats.n_tokens, seconds,
             (acc.contexts - done_before) * config.context_size / max(seconds, 1e-9))
    return stats


def describe(lm, sae) -> dict:
    """What the statistics are about (stored in the store's meta)."""
    md = sae.cfg.metadata
    return {"model": getattr(lm, "name", None), "hook": md.hook_name, "d_sae": sae.d_sae, "d_in": sae.d_in,
            "sae_path": str(sae.path) if getattr(sae, "path", None) else None, "release": md.release,
            "sae_id": md.sae_id, "neuronpedia_id": md.neuronpedia_id, "architecture": sae.cfg.architecture}
