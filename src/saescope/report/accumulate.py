"""The running statistics of every feature, updated batch by batch (pure tensor code: no model, no SAE).

See ``saescope.report.stats`` for what is computed. ``StatsAccumulator.update(tokens, f, mask)`` folds in one
batch; ``state_dict``/``load_state_dict`` make a pass resumable.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from .._config import JsonConfig
from ..errors import ConfigError


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
    # only candidates with a finite key need their windows (an empty slot, key -inf, is never shown): on the first
    # batch every slot is empty, and gathering windows for all of them would cost d_sae * K windows at once
    fi, fj = ((sel >= K) & torch.isfinite(top)).nonzero(as_tuple=True)
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
