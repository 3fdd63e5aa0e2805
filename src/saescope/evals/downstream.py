"""`evaluate_sae`: reconstruction metrics at the SAE's hook and downstream CE / KL with the SAE spliced in.

Two passes over the same fixed-length token contexts:

1. **Reconstruction** (the forward stops right after the hook): x at the hook → ``sae.encode`` / ``decode`` →
   `ReconstructionStats` over the evaluated tokens; also gives the mean activation used by mean-ablation.
2. **Downstream** (full forwards, four per batch): clean; the SAE spliced in (``x → x̂`` at the evaluated
   tokens, other tokens keep x); zero-ablation (x → 0 at *every* position); mean-ablation (x → the mean of x
   over the evaluated tokens, at every position). CE is the next-token loss predicted *from* evaluated tokens;
   KL(p_clean ‖ p_run) is averaged over evaluated tokens.

For a **transcoder** the metrics are those of its prediction of the output hook: reconstruction statistics of
``y`` (the activation at ``hook_name_out``, e.g. ``hook_mlp_out``) against ``decode(encode(x)) + skip``, and
downstream the module's output replaced by the prediction (ablations replace that output).

Evaluated tokens: all tokens, minus BOS and the other special tokens (EOS, PAD: document separators) when
``exclude_bos`` (the default). These conventions are SAELens's (``sae_lens.evals.get_recons_loss`` with its
special-token mask), so ``ce_loss_recovered`` and ``kl_score`` against zero-ablation coincide with its
``ce_loss_score`` / ``kl_div_score``; the mean-ablation baseline is saescope's addition.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import display
from ..errors import ConfigError, InputError
from ..progress import progress
from ..plan import fitting_batch_size
from ..site import attach, check_finite, sae_name
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
    prefixes: list = field(default_factory=list)   # Matryoshka SAEs: a PrefixResult per inner prefix (evals/prefixes.py)
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
            elif f.name == "prefixes":
                value = [p.to_dict() for p in value]
            elif isinstance(value, float) and not math.isfinite(value):
                value = None
            out[f.name] = value
        return out

    def _repr_html_(self) -> str:
        return display.render_eval(self)


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


class _Splice:
    """The edits of one downstream pass, for ``LanguageModel.intervene``: the SAE's output hook gets
    ``fn(y [..., width] raw) -> new raw value`` where ``mask [b, pos]`` is set (the SAE's prediction, or an
    ablation). A transcoder's input is read at its input hook first."""

    def __init__(self, att, replace):
        self.att, self.replace, self.x = att, replace, None

    def read(self, act, ctx=None):
        self.x = self.att.sae_input(act)
        return None

    def write(self, act, ctx=None):
        port = self.att.site.write_port
        x = self.x if self.att.is_transcoder else self.att.sae_input(act)
        return port.replace(act, self.replace(port.select(act), x))

    def edits(self) -> dict:
        site = self.att.site
        return {site.hook: self.read, site.hook_out: self.write} if self.att.is_transcoder else {site.hook: self.write}


def _prediction(att, x: torch.Tensor) -> torch.Tensor:
    """The SAE's reconstruction (a transcoder's prediction) in raw space: ``[..., d_in] -> [..., d_out]``."""
    return att.site.write_port.to_raw(att.sae(x))


# ----------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_sae(lm, sae, texts_or_dataset, tokens: int = DEFAULT_TOKENS, context_size: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, exclude_bos: bool = True, hook: str | None = None,
                 downstream: bool = True, seed: int = 0, name: str | None = None, split: str = "train",
                 column: str = "text", prefixes: bool = True) -> EvalResult:
    """Evaluate ``sae`` at its hook on about ``tokens`` tokens of ``texts_or_dataset``.

    texts_or_dataset: a dataset name or local file/folder (``saescope.data.iter_texts``), a list of texts, or
    a LongTensor ``[n, pos]`` of ready contexts. context_size: default the SAE's training context size or 128,
    at most the model's ``n_ctx``. exclude_bos: leave BOS/EOS/PAD tokens out of every metric (and out of the
    SAE splice). hook: override the SAE's ``metadata.hook_name``. downstream: also run CE/KL (4 full forwards
    per batch). split / column: for dataset names and files (``iter_texts``). prefixes: for a Matryoshka SAE
    also evaluate each inner prefix of its latents (``result.prefixes``). Returns an `EvalResult`; raises `NumericsError` on NaN/inf activations or reconstructions."""
    t0 = time.perf_counter()
    meta = sae.cfg.metadata
    if hook is not None and hook != meta.hook_name:
        sae = copy.copy(sae)                 # the same tensors, another hook in the metadata: a shallow copy
        sae.cfg = sae.cfg.replace(metadata={"hook_name": hook})
    if not sae.cfg.metadata.hook_name:
        raise ConfigError("the SAE's metadata has no hook_name; pass hook=... (CLI: --hook)")
    att = attach(lm, sae)
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
    ids_all = _token_contexts(lm, texts_or_dataset, math.ceil(tokens / context_size), context_size,
                              att.prepend_bos, seed, split=split, column=column)
    if len(ids_all) * context_size < tokens:
        log.warning("the dataset gave %d contexts of %d tokens, fewer than the %d tokens asked for",
                    len(ids_all), context_size, tokens)
    special = torch.tensor(_special_ids(lm) if exclude_bos else [], dtype=torch.long)
    mask_all = ~torch.isin(ids_all, special)
    if not mask_all.any():
        raise InputError("no token left to evaluate after excluding BOS/special tokens; give more text")
    batch_size = fitting_batch_size("eval", att, context_size, batch_size)
    batches = [(ids_all[i:i + batch_size], mask_all[i:i + batch_size]) for i in range(0, len(ids_all), batch_size)]
    with progress(total=len(batches) * (2 if downstream else 1), desc="eval", unit="batch") as bar:
        result = _evaluate(att, batches, bar, downstream, name or sae_name(sae), exclude_bos, context_size)
    if prefixes and sae.cfg.matryoshka_widths:
        from .prefixes import evaluate_prefixes

        result.prefixes = evaluate_prefixes(
            evaluate_sae, lm, sae, ids_all, tokens=tokens, batch_size=batch_size, exclude_bos=exclude_bos,
            downstream=downstream, seed=seed, prefixes=False)
    result.seconds = time.perf_counter() - t0
    log.info("evaluated %s on %d tokens in %.1fs: L0 %.1f, EV %.3f, CE recovered %.3f", result.sae, result.tokens,
             result.seconds, result.l0, result.explained_variance, result.ce_loss_recovered)
    return result


def _evaluate(att, batches, bar, downstream, name, exclude_bos, context_size) -> EvalResult:
    lm, sae = att.lm, att.sae
    device = lm.device
    port = att.site.write_port
    hooks = list(dict.fromkeys([att.hook, att.hook_out]))

    # ---- pass 1: reconstruction, forward stopped after the (output) hook ---------------------------------
    stats = M.ReconstructionStats(d_sae=sae.d_sae)
    for ids, mask in batches:
        acts = lm.run(ids.to(device), capture=hooks)
        x = att.sae_input(acts[att.hook])
        f, state = sae.encode_with_state(x)
        y_hat = port.to_raw(sae.decode(f, state) + (sae.skip_term(x) if sae.cfg.skip else 0))
        y = port.select(acts[att.hook_out]).to(y_hat)
        m = mask.to(y.device)
        y, y_hat, f = y[m], y_hat[m], f[m]
        check_finite(y_hat, f"SAE {name} reconstruction")
        stats.update(y, y_hat, f)
        bar.update(1)

    density = stats.feature_density
    result = EvalResult(
        model=lm.name, sae=name, hook=att.hook_out, tokens=stats.n, contexts=sum(len(b[0]) for b in batches),
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
        mean_y = stats.mean
        ds = M.DownstreamStats()
        for ids, mask in batches:
            ids_d, m = ids.to(device), mask.to(device)

            def splice(y, x, m=m):
                y_hat = _prediction(att, x).to(y)
                check_finite(y_hat[m], f"SAE {name} reconstruction")
                return torch.where(m[..., None], y_hat, y)

            clean = lm(ids_d)
            check_finite(clean, f"model {lm.name} logits")
            ce_mask = m[:, :-1]
            ds.add("clean", M.cross_entropy(clean, ids_d)[ce_mask])
            runs = (("sae", splice), ("zero", lambda y, x: torch.zeros_like(y)),
                    ("mean", lambda y, x: mean_y.to(y).expand_as(y)))
            for key, fn in runs:
                with lm.intervene(_Splice(att, fn).edits()):
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
