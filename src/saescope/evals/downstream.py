"""`evaluate_sae`: reconstruction metrics at the SAE's hook and downstream CE / KL with the SAE spliced in.

Two passes over the same fixed-length token contexts:

1. **Reconstruction** (the forward stops right after the hook): x at the hook → ``sae.encode`` / ``decode`` →
   `ReconstructionStats` over the evaluated tokens; also gives the mean activation used by mean-ablation.
2. **Downstream** (full forwards, four per batch): clean; the SAE spliced in (``x → x̂`` at the evaluated
   tokens, other tokens keep x); zero-ablation (x → 0 at *every* position); mean-ablation (x → the mean of x
   over the evaluated tokens, at every position). CE is the next-token loss predicted *from* evaluated tokens;
   KL(p_clean ‖ p_run) is averaged over evaluated tokens.

Evaluated tokens: all tokens, minus BOS and the other special tokens (EOS, PAD: document separators) when
``exclude_bos`` (the default). These conventions are SAELens's (``sae_lens.evals.get_recons_loss`` with its
special-token mask), so ``ce_loss_recovered`` and ``kl_score`` against zero-ablation coincide with its
``ce_loss_score`` / ``kl_div_score``; the mean-ablation baseline is saescope's addition.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, InputError, NumericsError
from ..progress import progress
from . import metrics as M

log = logging.getLogger(__name__)

DEFAULT_TOKENS = 16_384
DEFAULT_CONTEXT_SIZE = 128
DEFAULT_BATCH_SIZE = 8


@dataclass
class EvalResult:
    """Metrics of one SAE on one model and token sample (definitions: `saescope.evals.metrics`).

    ``*_mean_ablation`` use the mean-ablation baseline; the unsuffixed CE/KL scores use zero-ablation.
    Downstream fields are NaN when ``downstream=False``."""

    model: str
    sae: str
    hook: str
    tokens: int                      # evaluated tokens (reconstruction metrics)
    contexts: int
    context_size: int
    exclude_bos: bool
    d_sae: int
    l0: float
    l1: float
    explained_variance: float
    fvu: float
    mse: float
    sse_per_token: float
    cosine_similarity: float
    l2_ratio: float
    relative_reconstruction_bias: float
    dead_fraction: float
    dense_fraction_1pct: float
    dense_fraction_10pct: float
    density_histogram: M.DensityHistogram
    ce_loss_clean: float = math.nan
    ce_loss_sae: float = math.nan
    ce_loss_zero_ablation: float = math.nan
    ce_loss_mean_ablation: float = math.nan
    ce_loss_recovered: float = math.nan
    ce_loss_recovered_mean_ablation: float = math.nan
    ce_tokens: int = 0                # next-token predictions scored
    kl_sae: float = math.nan
    kl_zero_ablation: float = math.nan
    kl_mean_ablation: float = math.nan
    kl_score: float = math.nan
    kl_score_mean_ablation: float = math.nan
    seconds: float = 0.0
    feature_density: torch.Tensor | None = field(default=None, repr=False)   # [d_sae]

    def to_dict(self, include_density: bool = False) -> dict:
        """JSON-ready: NaN becomes None; ``feature_density`` (a d_sae list) only when asked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "feature_density":
                if include_density and value is not None:
                    out[f.name] = [float(v) for v in value]
                continue
            if isinstance(value, M.DensityHistogram):
                value = value.to_dict()
            elif isinstance(value, float) and not math.isfinite(value):
                value = None
            out[f.name] = value
        return out


# ----------------------------------------------------------------------------------------------------------
# where the SAE reads and writes: [b, pos, d] hooks, and attn.hook_z [b, pos, n_heads, d_head]
# ----------------------------------------------------------------------------------------------------------

def _to_sae(act: torch.Tensor, head: int | None) -> torch.Tensor:
    """Hook activation -> SAE input. ``[b, pos, d] -> [b, pos, d]``; ``[b, pos, h, dh] -> [b, pos, h*dh]`` (or
    ``[b, pos, dh]`` for one head)."""
    if act.dim() == 4:
        return act[:, :, head] if head is not None else act.flatten(-2)
    return act


def _from_sae(new: torch.Tensor, act: torch.Tensor, head: int | None) -> torch.Tensor:
    """Inverse of `_to_sae`: put ``new`` back into an activation shaped like ``act``."""
    new = new.to(act.dtype)
    if act.dim() == 4:
        if head is not None:
            out = act.clone()
            out[:, :, head] = new
            return out
        return new.reshape(act.shape)
    return new


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise NumericsError(f"{what} contains NaN or inf; check the model and SAE weights and their dtype")


# ----------------------------------------------------------------------------------------------------------
# tokens
# ----------------------------------------------------------------------------------------------------------

def _token_contexts(lm, source, n_contexts: int, context_size: int, prepend_bos: bool, seed: int,
                    split: str = "train", column: str = "text") -> torch.Tensor:
    """``[n, context_size]`` token ids from a tensor, a list of texts, or a dataset name / path."""
    from ..data import contexts_from

    # texts: a seeded shuffle over a buffer of 4x the contexts needed, a sample less tied to the source's first pages
    it = contexts_from(lm, source, context_size, prepend_bos=prepend_bos, seed=seed, split=split, column=column,
                       shuffle_buffer=min(1024, 4 * n_contexts))
    rows = list(itertools.islice(it, n_contexts))
    if not rows:
        raise InputError(f"dataset {source if isinstance(source, str) else '(texts)'} yielded no context of "
                         f"{context_size} tokens; give more text or a smaller --context-size")
    return torch.stack(rows)


def _special_ids(lm) -> list[int]:
    ids = {lm.info.bos_token_id, lm.info.eos_token_id, getattr(lm.tokenizer, "pad_token_id", None)}
    return sorted(i for i in ids if i is not None)


def _sae_name(sae) -> str:
    meta = sae.cfg.metadata
    if meta.release and meta.sae_id:
        return f"{meta.release}:{meta.sae_id}"
    if getattr(sae, "path", None):
        return str(sae.path)
    return f"{sae.cfg.architecture}-{sae.cfg.d_sae}"


# the hook edits take only the activation: LanguageModel.intervene passes the HookContext only to a parameter named ctx
def _splice_fn(sae, head: int | None, mask: torch.Tensor):
    """x -> x̂ at the evaluated tokens (``mask [b, pos]``), x elsewhere."""
    def splice(act):
        x = _to_sae(act, head)
        x_hat = sae(x.to(device=sae.device, dtype=sae.dtype)).to(device=x.device, dtype=x.dtype)
        _check_finite(x_hat[mask], f"SAE {_sae_name(sae)} reconstruction")
        return _from_sae(torch.where(mask[..., None], x_hat, x), act, head)
    return splice


def _zero_fn(head: int | None):
    """x -> 0 at every position."""
    def zero(act):
        return _from_sae(torch.zeros_like(_to_sae(act, head)), act, head)
    return zero


def _mean_fn(mean_x: torch.Tensor, head: int | None):
    """x -> mean_x ``[d_in]`` at every position."""
    def mean(act):
        x = _to_sae(act, head)
        return _from_sae(mean_x.to(device=x.device, dtype=x.dtype).expand_as(x), act, head)
    return mean


# ----------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_sae(lm, sae, texts_or_dataset, tokens: int = DEFAULT_TOKENS, context_size: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, exclude_bos: bool = True, hook: str | None = None,
                 downstream: bool = True, seed: int = 0, name: str | None = None, split: str = "train",
                 column: str = "text") -> EvalResult:
    """Evaluate ``sae`` at its hook on about ``tokens`` tokens of ``texts_or_dataset``.

    texts_or_dataset: a dataset name or local file/folder (``saescope.data.iter_texts``), a list of texts, or
    a LongTensor ``[n, pos]`` of ready contexts. context_size: default the SAE's training context size or 128,
    at most the model's ``n_ctx``. exclude_bos: leave BOS/EOS/PAD tokens out of every metric (and out of the
    SAE splice). hook: override the SAE's ``metadata.hook_name``. downstream: also run CE/KL (4 full forwards
    per batch). split / column: for dataset names and files (``iter_texts``). Returns an `EvalResult`; raises `NumericsError` on NaN/inf activations or reconstructions."""
    t0 = time.perf_counter()
    meta = sae.cfg.metadata
    hook = hook or meta.hook_name
    if not hook:
        raise ConfigError("the SAE's metadata has no hook_name; pass hook=... (CLI: --hook)")
    head = meta.hook_head_index
    if not isinstance(tokens, int) or tokens < 1:
        raise InputError(f"tokens must be a positive integer, got {tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    n_ctx = lm.info.n_ctx
    if isinstance(texts_or_dataset, torch.Tensor) and texts_or_dataset.dim() == 2:
        context_size = texts_or_dataset.shape[1]
    elif context_size is None:
        context_size = min(meta.context_size or DEFAULT_CONTEXT_SIZE, n_ctx)
    if not 2 <= context_size <= n_ctx:
        raise InputError(f"context_size {context_size} must be between 2 and the model's n_ctx {n_ctx}")
    width = lm.hook_width(hook)  # an unknown hook raises HookError listing the valid names
    if "hook_z" in hook and head is None:
        width *= lm.info.n_heads
    if width != sae.d_in:
        raise ConfigError(f"SAE d_in={sae.d_in} does not match the width {width} of hook {hook} on model {lm.name}; "
                          f"use an SAE made for this hook")
    from ..interp.compat import apply_model_conventions

    apply_model_conventions(lm, sae)  # e.g. hook_z SAEs trained on TransformerLens's processed z
    prepend_bos = meta.prepend_bos if meta.prepend_bos is not None else lm.info.default_prepend_bos

    ids_all = _token_contexts(lm, texts_or_dataset, math.ceil(tokens / context_size), context_size,
                              prepend_bos, seed, split=split, column=column)
    if len(ids_all) * context_size < tokens:
        log.warning("the dataset gave %d contexts of %d tokens, fewer than the %d tokens asked for",
                    len(ids_all), context_size, tokens)
    special = torch.tensor(_special_ids(lm) if exclude_bos else [], dtype=torch.long)
    mask_all = ~torch.isin(ids_all, special)
    if not mask_all.any():
        raise InputError("no token left to evaluate after excluding BOS/special tokens; give more text")
    batches = [(ids_all[i:i + batch_size], mask_all[i:i + batch_size]) for i in range(0, len(ids_all), batch_size)]
    with progress(total=len(batches) * (2 if downstream else 1), desc="eval", unit="batch") as bar:
        result = _evaluate(lm, sae, hook, head, batches, bar, downstream, name, exclude_bos, context_size)
    result.seconds = time.perf_counter() - t0
    log.info("evaluated %s on %d tokens in %.1fs: L0 %.1f, EV %.3f, CE recovered %.3f", result.sae, result.tokens,
             result.seconds, result.l0, result.explained_variance, result.ce_loss_recovered)
    return result


def _evaluate(lm, sae, hook, head, batches, bar, downstream, name, exclude_bos, context_size) -> EvalResult:
    device = lm.device

    # ---- pass 1: reconstruction, forward stopped after the hook -----------------------------------------
    stats = M.ReconstructionStats(d_sae=sae.d_sae)
    for ids, mask in batches:
        act = lm.run(ids.to(device), capture=hook)[hook]
        x = _to_sae(act, head)
        _check_finite(x, f"model {lm.name} activation at {hook}")
        x = x.to(device=sae.device, dtype=sae.dtype)
        f, state = sae.encode_with_state(x)
        x_hat = sae.decode(f, state)
        m = mask.to(x.device)
        x, x_hat, f = x[m], x_hat[m], f[m]
        _check_finite(x_hat, f"SAE {_sae_name(sae)} reconstruction")
        stats.update(x, x_hat, f)
        bar.update(1)

    density = stats.feature_density
    result = EvalResult(
        model=lm.name, sae=name or _sae_name(sae), hook=hook, tokens=stats.n, contexts=sum(len(b[0]) for b in batches),
        context_size=context_size, exclude_bos=exclude_bos, d_sae=sae.d_sae,
        l0=stats.l0, l1=stats.l1, explained_variance=stats.explained_variance, fvu=stats.fvu, mse=stats.mse,
        sse_per_token=stats.sse_per_token, cosine_similarity=stats.cosine_similarity, l2_ratio=stats.l2_ratio,
        relative_reconstruction_bias=stats.relative_reconstruction_bias,
        dead_fraction=M.dead_fraction(density), dense_fraction_1pct=M.dense_fraction(density, 0.01),
        dense_fraction_10pct=M.dense_fraction(density, 0.1),
        density_histogram=M.density_histogram(density, n_tokens=stats.n), feature_density=density,
    )

    # ---- pass 2: downstream CE / KL ------------------------------------------------------------------
    if downstream:
        mean_x = stats.mean.to(device=sae.device, dtype=sae.dtype)
        ds = M.DownstreamStats()
        for ids, mask in batches:
            ids_d, m = ids.to(device), mask.to(device)

            splice, zero, mean = _splice_fn(sae, head, m), _zero_fn(head), _mean_fn(mean_x, head)
            clean = lm(ids_d)
            _check_finite(clean, f"model {lm.name} logits")
            ce_mask = m[:, :-1]
            ds.add("clean", M.cross_entropy(clean, ids_d)[ce_mask])
            for key, fn in (("sae", splice), ("zero", zero), ("mean", mean)):
                with lm.intervene({hook: fn}):
                    logits = lm(ids_d)
                ds.add(key, M.cross_entropy(logits, ids_d)[ce_mask])
                ds.add("kl_" + key, M.kl_divergence(clean, logits)[m])
            bar.update(1)
        ce = {k: ds.mean(k) for k in ("clean", "sae", "zero", "mean")}
        kl = {k: ds.mean("kl_" + k) for k in ("sae", "zero", "mean")}
        result = dataclasses.replace(
            result, ce_loss_clean=ce["clean"], ce_loss_sae=ce["sae"], ce_loss_zero_ablation=ce["zero"],
            ce_loss_mean_ablation=ce["mean"], ce_tokens=ds.count("clean"),
            ce_loss_recovered=M.ce_loss_recovered(ce["clean"], ce["sae"], ce["zero"]),
            ce_loss_recovered_mean_ablation=M.ce_loss_recovered(ce["clean"], ce["sae"], ce["mean"]),
            kl_sae=kl["sae"], kl_zero_ablation=kl["zero"], kl_mean_ablation=kl["mean"],
            kl_score=M.kl_score(kl["sae"], kl["zero"]), kl_score_mean_ablation=M.kl_score(kl["sae"], kl["mean"]),
        )
    return result
