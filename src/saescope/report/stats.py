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
- logit lens: the one logit lens of ``saescope.site`` (``LENS``), top positive/negative tokens, when the SAE's
  decoder writes in the residual stream's basis.

The running state is checkpointed into the store being built every ``checkpoint_every`` batches, so a killed run
resumes where it stopped (``resume=True``) and gives the same result as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Iterable, Iterator

import torch

from ..data import contexts_from
from ..errors import InputError
from ..progress import progress
from ..plan import fitting_batch_size
from ..site import LENS, attach, describe, load_labels, logit_lens
from .accumulate import StatsAccumulator, StatsConfig
from .records import Example, FeatureRecord, FeatureStats

log = logging.getLogger(__name__)

__all__ = ["Example", "FeatureRecord", "FeatureStats", "StatsAccumulator", "StatsConfig", "compute_feature_stats",
           "finalize", "vocab_strings"]


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


def compute_feature_stats(lm, sae, source, config: StatsConfig = StatsConfig(), out: str | Path | None = None,
                          resume: bool = False, labels: dict[int, str] | None = None) -> FeatureStats:
    """One streaming pass: statistics of every feature of ``sae`` on ``source``.

    source: a LongTensor ``[n, ctx]`` of token contexts, an iterable of texts, or a dataset name / local file
    (``saescope.data.iter_texts``). ``out``: the ``features.sqlite`` to write (built as ``<out>.partial`` with
    checkpoints, renamed when complete); ``resume`` continues a partial build with the same config.
    Returns the FeatureStats (also written to ``out`` when given).
    """
    from . import store as store_mod

    att = attach(lm, sae)
    meta = describe(lm, sae)
    if sae.device.type == "cpu" and sae.dtype in (torch.float16, torch.bfloat16):
        import copy

        log.info("computing statistics with a float32 copy of the %s SAE (half precision is slow on the CPU)", sae.dtype)
        path, sae = sae.path, copy.deepcopy(sae).float()
        sae.path = path
        att = dataclasses.replace(att, sae=sae)
    if labels is None:
        labels = load_labels(sae)
    if isinstance(source, torch.Tensor) and source.dim() == 2:
        config = dataclasses.replace(config, context_size=int(source.shape[1]))
    n_contexts = math.ceil(config.n_tokens / config.context_size)
    acc = StatsAccumulator(sae.d_sae, config, device=sae.device)
    partial = None
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
        contexts = contexts_from(lm, source, config.context_size, prepend_bos=att.prepend_bos, seed=config.seed)
        batch_size = fitting_batch_size("stats", att, config.context_size, config.batch_size)
        for batch in _batches(contexts, batch_size, n_contexts, done_before):
            f = att.features(batch.to(lm.device))
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
    if att.has_logit_lens and config.logit_k:
        lens = logit_lens(lm, sae.feature_directions().detach(), config.logit_k)
        logits = (lens.pos_values, lens.pos_ids, lens.neg_values, lens.neg_ids)
        meta["logit_lens"] = LENS
    meta.update(n_contexts=acc.contexts, seconds=seconds)
    stats = finalize(acc, vocab_strings(lm), logits, labels, seconds, meta)
    if partial is not None:
        partial.finish(stats)
    log.info("feature statistics: %d tokens in %.1fs (%.0f tok/s)", stats.n_tokens, seconds,
             (acc.contexts - done_before) * config.context_size / max(seconds, 1e-9))
    return stats
