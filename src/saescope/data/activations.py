"""Activations at a hook point: a streaming harvester with a shuffle buffer, and an on-disk cache.

``ActivationStream`` runs the model batched with early exit (``lm.run(capture=hook)`` stops after the hook's
layer), drops BOS/EOS/padding tokens by default, mixes tokens of many contexts in a seeded shuffle buffer and
yields ``[batch_size, d_in]`` float32 batches.

``ActivationCache`` is a directory of ``.npy`` shards (memory-mapped on read) plus ``meta.json``. Rows arrive in
whole context batches; every ``commit_tokens`` rows (default 4096) they are appended to ``tail.bin`` (raw rows,
fsync'd) and ``meta.json`` records the committed ``tail_rows`` and how many contexts are complete. A full tail
becomes the next ``.npy`` shard. ``harvest`` resumes where the last commit stopped (a kill loses at most about
``commit_tokens`` plus one context batch; Ctrl-C commits what it has first); bytes past ``tail_rows`` left by a
torn write are cut away on resume.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .._io import append_durable, atomic_write_bytes, atomic_write_json
from ..errors import HookError, InputError, NumericsError
from ..progress import progress

log = logging.getLogger(__name__)
META_FILE = "meta.json"
TAIL_FILE = "tail.bin"


def _hook_width(lm, hook: str) -> int:
    width = lm.hook_width(hook)
    if hook.endswith("hook_z"):
        width *= lm.info.n_heads
    return int(width)


def _special_token_ids(lm) -> torch.Tensor:
    tok = lm.tokenizer
    ids = set(getattr(tok, "all_special_ids", []) or [])
    for value in (getattr(lm.info, "bos_token_id", None), getattr(lm.info, "eos_token_id", None),
                  tok.pad_token_id, tok.bos_token_id, tok.eos_token_id):
        if value is not None:
            ids.add(int(value))
    return torch.tensor(sorted(ids), dtype=torch.long)


def _batched_contexts(contexts: Iterable[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    group = []
    for ctx in contexts:
        group.append(ctx)
        if len(group) == n:
            yield torch.stack(group)
            group = []
    if group:
        yield torch.stack(group)


def hook_activations(lm, hook: str, ids: torch.Tensor, exclude_special: bool = True, d_in: int | None = None,
                     special: torch.Tensor | None = None) -> torch.Tensor:
    """Token ids [b, pos] -> activations [n_kept, d_in] (float32, CPU) at ``hook`` with early exit."""
    acts = lm.run(ids.to(lm.device), capture=hook)[hook]
    acts = acts.reshape(acts.shape[0], acts.shape[1], -1)
    if d_in is not None and acts.shape[-1] != d_in:
        raise HookError(f"{hook}: activation width {acts.shape[-1]} differs from d_in {d_in}; pick the matching hook or SAE")
    acts = acts.reshape(-1, acts.shape[-1]).float().cpu()
    if exclude_special:
        if special is None:
            special = _special_token_ids(lm)
        keep = ~torch.isin(ids.reshape(-1).cpu(), special)
        acts = acts[keep]
    return acts


class ActivationStream:
    """Iterable of ``[batch_size, d_in]`` activation batches from token contexts (see module docstring)."""

    def __init__(self, lm, hook: str, contexts: Iterable[torch.Tensor], batch_size: int = 4096,
                 buffer_tokens: int = 65536, seed: int = 0, exclude_special: bool = True,
                 harvest_batch_size: int = 32, d_in: int | None = None):
        self.lm = lm
        self.hook = hook
        self.contexts = contexts
        self.batch_size = int(batch_size)
        self.buffer_tokens = max(int(buffer_tokens), self.batch_size)
        self.seed = seed
        self.exclude_special = exclude_special
        self.harvest_batch_size = harvest_batch_size
        width = _hook_width(lm, hook)
        if d_in is not None and d_in != width:
            raise HookError(f"{hook}: hook width {width} differs from d_in {d_in}; pick the matching hook or SAE")
        self.d_in = width

    def __iter__(self) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        special = _special_token_ids(self.lm)
        buf = torch.empty(0, self.d_in)
        for ids in _batched_contexts(self.contexts, self.harvest_batch_size):
            acts = hook_activations(self.lm, self.hook, ids, self.exclude_special, self.d_in, special)
            buf = torch.cat([buf, acts])
            if buf.shape[0] >= self.buffer_tokens:
                buf = buf[torch.randperm(buf.shape[0], generator=g)]
                # emit half of the buffer; the rest keeps mixing with new contexts
                n_out = (buf.shape[0] // 2 // self.batch_size) * self.batch_size or self.batch_size
                for s in range(0, n_out, self.batch_size):
                    yield buf[s:s + self.batch_size]
                buf = buf[n_out:]
        buf = buf[torch.randperm(buf.shape[0], generator=g)]
        for s in range(0, buf.shape[0] - self.batch_size + 1, self.batch_size):
            yield buf[s:s + self.batch_size]


# ---------------------------------------------------------------------------------------------------------
def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, lambda f: np.save(f, array, allow_pickle=False))



class ActivationCache:
    """Sharded, memory-mapped activations ``[n_tokens, d_in]`` on disk.

    Write: ``cache = ActivationCache.create(dir, d_in, meta)``; ``cache.append(acts, contexts=n)`` (whole
    contexts); ``cache.commit()`` (durable now; also done every ``commit_tokens`` rows); ``cache.finalize()``. Read: ``ActivationCache.open(dir)``; ``len(cache)``, ``cache.shape``,
    ``cache.take_rows(sorted_indices) -> Tensor [n, d_in]``, ``cache[a:b]``.
    """

    def __init__(self, path: Path, meta: dict):
        self.path = Path(path)
        self.meta = meta
        self.d_in = int(meta["d_in"])
        self._maps: list[np.ndarray] | None = None
        self._buf: list[np.ndarray] = []
        self._buf_rows = 0
        self._buf_contexts = 0

    # ---- writing ----------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path, d_in: int, meta: dict | None = None, dtype: str = "float32",
               shard_tokens: int = 262144, commit_tokens: int = 4096) -> "ActivationCache":
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        full = {"format": "saescope-activations/1", "d_in": int(d_in), "dtype": dtype, "shard_tokens": int(shard_tokens),
                "commit_tokens": int(commit_tokens), "shards": [], "shard_sizes": [], "shard_contexts": [],
                "n_tokens": 0, "tail_rows": 0, "tail_contexts": 0, "contexts_done": 0, "complete": False}
        full.update(meta or {})
        cache = cls(path, full)
        atomic_write_json(path / META_FILE, full)
        return cache

    def append(self, acts: torch.Tensor, contexts: int = 0) -> None:
        """Add rows [n, d_in] (and count ``contexts`` finished contexts); committed every ``commit_tokens`` rows."""
        if acts.shape[-1] != self.d_in:
            raise HookError(f"{self.path}: activation width {acts.shape[-1]} differs from the cache's d_in {self.d_in}")
        rows = acts.detach().cpu().numpy()
        with np.errstate(over="ignore"):
            stored = rows.astype(self.meta["dtype"], copy=False)
        if not np.isfinite(stored).all():
            peak = float(np.abs(rows[np.isfinite(rows)]).max(initial=0.0))
            where = "NaN/inf activations" if not np.isfinite(rows).all() else \
                f"activations beyond {self.meta['dtype']}'s range (max |x| = {peak:.3g}); use float32"
            raise NumericsError(f"{self.path}: {where}; nothing more was written")
        self._buf.append(stored)
        self._buf_rows += acts.shape[0]
        self._buf_contexts += contexts
        if self._buf_rows >= min(self.meta.get("commit_tokens", 4096), self.meta["shard_tokens"]):
            self.commit()

    @property
    def rows_written(self) -> int:
        """Rows stored durably (shards + committed tail); ``len(cache)`` counts the shards only."""
        return int(self.meta["n_tokens"]) + int(self.meta.get("tail_rows", 0))

    def _row_bytes(self) -> int:
        return self.d_in * np.dtype(self.meta["dtype"]).itemsize

    def commit(self) -> None:
        """Append the buffered rows to the tail (fsync), then record them in meta.json; a full tail -> shard."""
        if self._buf_rows == 0 and self._buf_contexts == 0:
            return
        tail_rows = int(self.meta.get("tail_rows", 0))
        if self._buf_rows:
            data = np.ascontiguousarray(np.concatenate(self._buf)).tobytes()
            append_durable(self.path / TAIL_FILE, data, tail_rows * self._row_bytes())
        self.meta["tail_rows"] = tail_rows + self._buf_rows
        self.meta["tail_contexts"] = int(self.meta.get("tail_contexts", 0)) + self._buf_contexts
        self.meta["contexts_done"] += self._buf_contexts
        self._buf, self._buf_rows, self._buf_contexts = [], 0, 0
        if self.meta["tail_rows"] >= self.meta["shard_tokens"]:
            self._promote_tail()
        else:
            atomic_write_json(self.path / META_FILE, self.meta)

    def _promote_tail(self) -> None:
        """The committed tail becomes the next .npy shard (then meta.json, then the tail is emptied)."""
        rows = int(self.meta.get("tail_rows", 0))
        if rows:
            raw = np.fromfile(self.path / TAIL_FILE, dtype=self.meta["dtype"], count=rows * self.d_in)
            if raw.size != rows * self.d_in:
                raise InputError(f"{self.path / TAIL_FILE}: shorter than meta.json records; harvest again")
            name = f"shard_{len(self.meta['shards']):05d}.npy"
            _atomic_save_npy(self.path / name, raw.reshape(rows, self.d_in))
            self.meta["shards"].append(name)
            self.meta["shard_sizes"].append(rows)
            self.meta.setdefault("shard_contexts", []).append(int(self.meta.get("tail_contexts", 0)))
            self.meta["n_tokens"] += rows
        self.meta["tail_rows"], self.meta["tail_contexts"] = 0, 0
        atomic_write_json(self.path / META_FILE, self.meta)
        if (self.path / TAIL_FILE).exists():
            append_durable(self.path / TAIL_FILE, b"", 0)
        self._maps = None

    def flush(self) -> None:
        """Commit the buffer and turn the tail into a shard."""
        self.commit()
        if self.meta.get("tail_rows", 0):
            self._promote_tail()

    def finalize(self) -> "ActivationCache":
        self.flush()
        self.meta["complete"] = True
        atomic_write_json(self.path / META_FILE, self.meta)
        return self

    # ---- reading ----------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path) -> "ActivationCache":
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.exists():
            raise InputError(f"{path}: not an activation cache (no {META_FILE}); create one with 'saescope harvest'")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            int(meta["d_in"]), list(meta["shards"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise InputError(f"{meta_path}: corrupt activation-cache metadata; harvest again") from None
        return cls(path, meta)

    def _arrays(self) -> list[np.ndarray]:
        if self._maps is None:
            maps = []
            for name, size in zip(self.meta["shards"], self.meta["shard_sizes"]):
                try:
                    arr = np.load(self.path / name, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError):
                    raise InputError(f"{self.path / name}: missing or corrupt shard; harvest again") from None
                if arr.shape != (size, self.d_in):
                    raise InputError(f"{self.path / name}: shape {list(arr.shape)} != {[size, self.d_in]}; harvest again")
                maps.append(arr)
            self._maps = maps
            self._offsets = np.concatenate([[0], np.cumsum(self.meta["shard_sizes"])]).astype(np.int64)
        return self._maps

    def __len__(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.d_in)

    def take_rows(self, idx) -> torch.Tensor:
        """Rows at (preferably sorted) indices -> float32 Tensor [len(idx), d_in]."""
        maps = self._arrays()
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((idx.shape[0], self.d_in), dtype=np.float32)
        shard = np.searchsorted(self._offsets, idx, side="right") - 1
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = maps[s][idx[sel] - self._offsets[s]]
        return torch.from_numpy(out)

    def __getitem__(self, item) -> torch.Tensor:
        if isinstance(item, slice):
            return self.take_rows(np.arange(*item.indices(len(self))))
        return self.take_rows(np.asarray(item).reshape(-1))


def open_matching(out: Path, settings: dict) -> "ActivationCache | None":
    """The harvest already in ``out`` (to resume), or None; InputError naming the first setting that differs."""
    if not (out / META_FILE).exists():
        return None
    cache = ActivationCache.open(out)
    for key, value in settings.items():
        if cache.meta.get(key) != value:
            raise InputError(f"{out}: holds a harvest with a different {key} ({cache.meta.get(key)!r}, now "
                             f"{value!r}); choose another --out")
    return cache


def harvest(lm, hook: str, dataset, tokens: int, out, split: str = "train", column: str = "text",
            context_size: int = 128, prepend_bos: bool = True, seed: int = 0, batch_size: int = 32,
            exclude_special: bool = True, dtype: str = "float32", shard_tokens: int = 262144,
            commit_tokens: int = 4096) -> ActivationCache:
    """Write ``tokens`` activations of ``lm`` at ``hook`` over ``dataset`` to an ActivationCache at ``out``.

    ``dataset``: an HF dataset name, a local file/folder, or an iterable of strings. Resumes an interrupted
    harvest with the same settings (from its last commit, at most about ``commit_tokens`` rows plus one batch of
    ``batch_size`` contexts back); refuses a directory holding something else.
    """
    from .text import iter_texts, token_contexts

    out = Path(out)
    d_in = _hook_width(lm, hook)
    settings = {"model": getattr(lm, "name", None), "hook": hook,
                "dataset": dataset if isinstance(dataset, str) else "texts", "split": split, "column": column,
                "context_size": context_size, "prepend_bos": prepend_bos, "seed": seed,
                "exclude_special": exclude_special, "target_tokens": int(tokens)}
    cache = open_matching(out, settings)
    if cache is not None:
        if cache.d_in != d_in:
            raise HookError(f"{out}: cache d_in {cache.d_in} differs from the hook width {d_in}")
        if cache.meta.get("complete"):
            return cache
        log.info("resuming harvest at %d tokens", cache.rows_written)
    elif out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: is not empty and holds no activation cache; choose an empty or new --out")
    else:
        cache = ActivationCache.create(out, d_in, settings, dtype=dtype, shard_tokens=shard_tokens,
                                       commit_tokens=commit_tokens)

    skip = int(cache.meta["contexts_done"])
    have = cache.rows_written
    texts = iter_texts(dataset, split=split, column=column) if isinstance(dataset, str) else iter(dataset)
    contexts = token_contexts(lm, texts, context_size, prepend_bos=prepend_bos, seed=seed)
    special = _special_token_ids(lm)
    bar = progress(total=int(tokens), initial=have, desc="harvest", unit="tok")
    seen = 0
    try:
        for ids in _batched_contexts(contexts, batch_size):
            if seen + ids.shape[0] <= skip:
                seen += ids.shape[0]
                continue
            if seen < skip:
                ids = ids[skip - seen:]
            seen += ids.shape[0]
            acts = hook_activations(lm, hook, ids, exclude_special, d_in, special)
            if have + acts.shape[0] > tokens:
                acts = acts[:tokens - have]
            cache.append(acts, contexts=ids.shape[0])
            have += acts.shape[0]
            bar.update(acts.shape[0])
            if have >= tokens:
                break
    except KeyboardInterrupt:
        cache.commit()  # whole context batches only: the resumed harvest continues exactly after them
        log.warning("harvest interrupted at %d of %d tokens; run the same command again to resume", have, tokens)
        raise
    finally:
        bar.close()
    if have < tokens:
        log.warning("%s: the dataset ran out after %d of %d tokens", dataset, have, tokens)
    cache.finalize()
    if len(cache) == 0:
        raise InputError(f"{dataset}: produced no activations (empty dataset?)")
    return cache
