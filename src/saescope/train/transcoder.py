"""Transcoder training: predict the activation ``y`` at ``target_hook`` from ``x`` at ``hook``.

    f     = relu(TopK(x @ W_enc + b_enc))     (or BatchTopK, or Matryoshka BatchTopK)     [B, d_sae]
    y_hat = f @ W_dec + b_dec (+ x @ W_skip^T with ``skip``)                              [B, d_out]
    L     = ||y - y_hat||^2 (+ aux * AuxK on y - y_hat)

(Dunefsky et al. 2024; the skip path as in Paulo et al. 2025.) The input is never shifted by ``b_dec``, which
lives in the output space. Inputs and targets are each scaled to E||.|| = sqrt(width) during training; the
scales are folded back at export (``export_tensors``).

Pair sources: the rows a pair source yields are ``[x | y]`` concatenated (``[B, d_in + d_out]``), so that the
trainer's non-finite filtering, permutation and resume treat a pair as one row; ``pair_split = (d_in, d_out)``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import InputError
from .losses import StepOutput, TrainableSAE, sparse_step
from .matryoshka import resolved_widths
from .sources import ArraySource, StreamSource, load_array_file


class TrainableTranscoder(TrainableSAE):
    """Parameters of a (skip) transcoder in normalised space: ``d_in -> d_sae -> d_out``."""

    def __init__(self, cfg, d_in: int, d_out: int, generator: torch.Generator, device=None, dtype=torch.float32):
        super().__init__(cfg, d_in, generator, device=device, dtype=dtype)
        d_sae = self.d_sae
        self.d_out = d_out
        W_dec = torch.randn(d_sae, d_out, generator=generator, dtype=dtype)
        W_dec *= cfg.resolved_decoder_init_norm / W_dec.norm(dim=1, keepdim=True)
        W_enc_T = torch.randn(d_sae, d_in, generator=generator, dtype=dtype)
        W_enc_T /= W_enc_T.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec.to(device))
        self.W_enc_T = nn.Parameter(W_enc_T.to(device))
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=dtype, device=device))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in, dtype=dtype, device=device))
        self.widths = resolved_widths(cfg, d_sae)

    def x_in(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def loss(self, x: torch.Tensor, dead: torch.Tensor | None, l1_scale: float = 1.0, *,
             target: torch.Tensor | None = None) -> StepOutput:
        """x [B, d_in], target [B, d_out] (both normalised)."""
        if target is None:
            raise InputError("a transcoder's training step needs the target activations")
        base = self.b_dec if not self.cfg.skip else x @ self.W_skip.t() + self.b_dec
        return sparse_step(self, x, target, dead, base, self.widths)

    @torch.no_grad()
    def export_tensors(self, scale: float, scale_out: float = 1.0) -> dict[str, torch.Tensor]:
        """Raw-space tensors: with x' = s x, y' = t y: W_enc -> s W_enc, W_dec -> W_dec / t, b_dec -> b_dec / t,
        W_skip -> W_skip s / t; the encoder bias and thresholds are unchanged (pre-activations are)."""
        t = {
            "W_enc": (self.W_enc_T.t() * scale).contiguous(),
            "W_dec": (self.W_dec / scale_out).contiguous(),
            "b_enc": self.b_enc.clone(),
            "b_dec": (self.b_dec / scale_out).clone(),
        }
        if self.cfg.skip:
            t["W_skip"] = self.W_skip * (scale / scale_out)
        if self.cfg.batch_level_topk:
            t["threshold"] = torch.full_like(self.b_enc, max(float(self.batch_threshold), 0.0))
        return {k: v.detach().float().cpu().contiguous() for k, v in t.items()}


# ---------------------------------------------------------------------------------------------------------
# pair sources
# ---------------------------------------------------------------------------------------------------------

def _as_rows(a, name: str) -> torch.Tensor:
    if isinstance(a, (str,)) or hasattr(a, "__fspath__"):
        from pathlib import Path

        a = load_array_file(Path(a))
    t = a if isinstance(a, torch.Tensor) else torch.as_tensor(a)
    if t.dim() != 2 or t.shape[0] == 0:
        raise InputError(f"{name}: expected activations of shape [N, width] with N > 0, got {list(t.shape)}")
    return t.detach().float()


def pair_source(source, cfg, batch_size: int):
    """A training source of ``[x | y]`` rows: ``(x, y)`` arrays/tensors/paths of equal length, a pair cache
    (an ActivationCache whose meta has ``pair_split``), or ``(lm, hook, dataset)`` with ``cfg.target_hook``."""
    from pathlib import Path

    from ..data.activations import ActivationCache

    if isinstance(source, tuple) and len(source) == 2:
        x, y = _as_rows(source[0], "input activations"), _as_rows(source[1], "target activations")
        if x.shape[0] != y.shape[0]:
            raise InputError(f"transcoder pairs: {x.shape[0]} input rows but {y.shape[0]} target rows")
        src = ArraySource(torch.cat([x, y], 1), "activation pairs", cfg.seed)
        src.pair_split = (int(x.shape[1]), int(y.shape[1]))
        return src
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        source = ActivationCache.open(Path(source))
    if isinstance(source, ActivationCache):
        split = source.meta.get("pair_split")
        if not (isinstance(split, list) and len(split) == 2 and sum(split) == source.d_in):
            raise InputError(f"{source.path}: not a pair cache (meta.json has no pair_split); harvest it with "
                             f"--target-hook")
        if cfg.target_hook and source.meta.get("target_hook") != cfg.target_hook:
            raise InputError(f"{source.path}: holds targets at {source.meta.get('target_hook')!r}, not {cfg.target_hook!r}")
        meta = {k: v for k, v in source.meta.items() if k in ("model", "hook", "target_hook", "dataset", "context_size",
                                                              "prepend_bos")}
        meta["activations"] = str(source.path)
        src = ArraySource(source, str(source.path), cfg.seed, meta)
        src.pair_split = (int(split[0]), int(split[1]))
        return src
    if isinstance(source, tuple) and len(source) == 3:
        lm, hook, dataset = source
        if cfg.target_hook is None:
            raise InputError("a transcoder trained from a model needs target_hook (CLI --target-hook)")
        return pair_stream(lm, hook, cfg.target_hook, dataset, cfg, batch_size)
    raise InputError(f"unsupported transcoder training source of type {type(source).__name__}; pass (x, y) "
                     f"activations, a pair cache, or (lm, hook, dataset) with target_hook")


def pair_activations(lm, hook: str, target_hook: str, ids: torch.Tensor, special: torch.Tensor | None,
                     widths: tuple[int, int]) -> torch.Tensor:
    """Token ids [b, pos] -> ``[n_kept, d_in + d_out]`` rows (float32, CPU): the two hooks side by side."""
    acts = lm.run(ids.to(lm.device), capture=[hook, target_hook])
    rows = []
    for h, w in zip((hook, target_hook), widths):
        a = acts[h].reshape(acts[h].shape[0] * acts[h].shape[1], -1)
        if a.shape[-1] != w:
            raise InputError(f"{h}: activation width {a.shape[-1]} differs from {w}")
        rows.append(a.float().cpu())
    out = torch.cat(rows, 1)
    if special is not None:
        out = out[~torch.isin(ids.reshape(-1).cpu(), special)]
    return out


class PairStream:
    """Iterable of ``[x | y]`` rows from token contexts, mixed in a seeded shuffle buffer."""

    def __init__(self, lm, hook, target_hook, contexts, batch_size, buffer_tokens, seed, exclude_special,
                 harvest_batch_size):
        from ..data.activations import _hook_width

        self.lm, self.hook, self.target_hook, self.contexts = lm, hook, target_hook, contexts
        self.widths = (_hook_width(lm, hook), _hook_width(lm, target_hook))
        self.batch_size, self.buffer_tokens = batch_size, max(buffer_tokens, batch_size)
        self.seed, self.exclude_special, self.harvest_batch_size = seed, exclude_special, harvest_batch_size

    def __iter__(self):
        from ..data.activations import _batched_contexts, _special_token_ids

        g = torch.Generator().manual_seed(self.seed)
        special = _special_token_ids(self.lm) if self.exclude_special else None
        buf = torch.empty(0, sum(self.widths))
        for ids in _batched_contexts(self.contexts, self.harvest_batch_size):
            buf = torch.cat([buf, pair_activations(self.lm, self.hook, self.target_hook, ids, special, self.widths)])
            if buf.shape[0] >= self.buffer_tokens:
                buf = buf[torch.randperm(buf.shape[0], generator=g)]
                n_out = (buf.shape[0] // 2 // self.batch_size) * self.batch_size or self.batch_size
                yield buf[:n_out]
                buf = buf[n_out:]
        yield buf[torch.randperm(buf.shape[0], generator=g)]


def pair_stream(lm, hook: str, target_hook: str, dataset, cfg, batch_size: int) -> StreamSource:
    from ..data.text import iter_texts, token_contexts

    name = dataset if isinstance(dataset, str) else "texts"

    def make(seed):
        texts = iter_texts(dataset, split=cfg.dataset_split, column=cfg.dataset_column) if isinstance(dataset, str) \
            else iter(dataset)
        contexts = token_contexts(lm, texts, cfg.context_size, prepend_bos=cfg.prepend_bos, seed=seed)
        return PairStream(lm, hook, target_hook, contexts, batch_size, cfg.buffer_tokens, seed, cfg.exclude_special,
                          cfg.harvest_batch_size)

    widths = make(cfg.seed).widths
    meta = {"model": getattr(lm, "name", None), "hook": hook, "target_hook": target_hook, "dataset": name,
            "context_size": cfg.context_size, "prepend_bos": cfg.prepend_bos}
    src = StreamSource(make, sum(widths), name, cfg.seed, meta)
    src._batch_size = batch_size
    src.pair_split = widths
    return src


def harvest_pairs(lm, hook: str, target_hook: str, dataset, tokens: int, out, split: str = "train",
                  column: str = "text", context_size: int = 128, prepend_bos: bool = True, seed: int = 0,
                  batch_size: int = 32, exclude_special: bool = True, dtype: str = "float32",
                  shard_tokens: int = 131072):
    """Write ``tokens`` ``[x | y]`` pair rows (``hook`` | ``target_hook``) to an ActivationCache at ``out`` (a
    *pair cache*: ``meta.json`` records ``target_hook`` and ``pair_split``), for ``train --activations``.
    Resumes an interrupted harvest with the same settings at the last written shard."""
    from pathlib import Path

    from ..data.activations import (ActivationCache, _batched_contexts, _hook_width, _special_token_ids,
                                    open_matching)
    from ..data.text import iter_texts, token_contexts
    from ..progress import progress

    out = Path(out)
    widths = (_hook_width(lm, hook), _hook_width(lm, target_hook))
    settings = {"model": getattr(lm, "name", None), "hook": hook, "target_hook": target_hook,
                "pair_split": list(widths), "dataset": dataset if isinstance(dataset, str) else "texts",
                "split": split, "column": column, "context_size": context_size, "prepend_bos": prepend_bos,
                "seed": seed, "exclude_special": exclude_special, "target_tokens": int(tokens)}
    cache = open_matching(out, settings)
    if cache is not None and cache.meta.get("complete"):
        return cache
    if cache is None:
        if out.exists() and any(out.iterdir()):
            raise InputError(f"{out}: is not empty and holds no activation cache; choose an empty or new --out")
        cache = ActivationCache.create(out, sum(widths), settings, dtype=dtype, shard_tokens=shard_tokens)
    skip, have = int(cache.meta["contexts_done"]), len(cache)
    texts = iter_texts(dataset, split=split, column=column) if isinstance(dataset, str) else iter(dataset)
    contexts = token_contexts(lm, texts, context_size, prepend_bos=prepend_bos, seed=seed)
    special = _special_token_ids(lm) if exclude_special else None
    seen = 0
    with progress(total=int(tokens), initial=have, desc="harvest pairs", unit="tok") as bar:
        for ids in _batched_contexts(contexts, batch_size):
            seen += ids.shape[0]
            if seen <= skip:
                continue
            ids = ids[max(0, ids.shape[0] - (seen - skip)):]
            rows = pair_activations(lm, hook, target_hook, ids, special, widths)[:tokens - have]
            cache.append(rows, contexts=ids.shape[0])
            have += rows.shape[0]
            bar.update(rows.shape[0])
            if have >= tokens:
                break
    cache.finalize()
    if len(cache) == 0:
        raise InputError(f"{dataset}: produced no activations (empty dataset?)")
    return cache
