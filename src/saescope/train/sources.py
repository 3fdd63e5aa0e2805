"""Where training activations come from: ``resolve_source(source, cfg, batch_size)``.

  * a tensor / numpy array ``[N, d_in]`` (also a ``np.memmap``), a ``.npy`` or ``.safetensors`` file path,
    or an ``ActivationCache`` (object or directory) -> ``ArraySource``: rows in a seeded per-epoch permutation,
    so the data position is a pure function of the step and resume is exact;
  * ``(lm, hook, dataset_or_texts)`` or an ``ActivationStream`` -> ``StreamSource``: activations computed on
    the fly (on resume the stream restarts with a step-dependent seed: training continues, not bit-exactly).

Both give ``batch(step, batch_size, rank, world)`` (this rank's share of the global batch) and ``sample(n)``.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InputError
from . import distributed as ddp
from .config import TrainConfig


class ArraySource:
    """Rows of an ``[N, d_in]`` array in a seeded per-epoch permutation."""

    exact_resume = True

    def __init__(self, array, name: str, seed: int, meta: dict | None = None):
        self.array = array
        self.name = name
        self.seed = seed
        self.meta = meta or {}
        shape = tuple(array.shape)
        if len(shape) != 2 or shape[0] == 0:
            raise InputError(f"{name}: expected activations of shape [N, d_in] with N > 0, got {list(shape)}")
        self.n, self.d_in = int(shape[0]), int(shape[1])
        self._perm_epoch = -1
        self._perm = None

    def _perm_for(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, start: int, count: int) -> torch.Tensor:
        """Global stream positions [start, start + count) -> row indices."""
        out = []
        while count > 0:
            epoch, off = divmod(start, self.n)
            take = min(count, self.n - off)
            out.append(self._perm_for(epoch)[off:off + take])
            start += take
            count -= take
        return torch.cat(out)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        idx, _ = idx.sort()  # locality for memory-mapped arrays; the loss is order-independent
        a = self.array
        if isinstance(a, torch.Tensor):
            return a[idx]
        if hasattr(a, "take_rows"):
            return a.take_rows(idx.numpy())
        return torch.from_numpy(np.ascontiguousarray(a[idx.numpy()]))

    def batch(self, step: int, batch_size: int, rank: int, world: int) -> torch.Tensor:
        idx = self.indices(step * batch_size, batch_size)
        per = batch_size // world
        return self.take(idx[rank * per:(rank + 1) * per])

    def sample(self, n: int) -> torch.Tensor:
        return self.take(self.indices(0, min(n, self.n)))


class StreamSource:
    """Batches from an ActivationStream, re-cut to exactly the batch size.

    ``sharded``: the stream already holds only this rank's contexts (``stream_from_model`` under DDP), so each rank
    computes its own ``batch_size / world`` rows. Otherwise (a stream object the caller built) every rank computes
    the global batch and keeps its slice.
    """

    exact_resume = False

    def __init__(self, make_stream: Callable[[int], Any], d_in: int, name: str, seed: int, meta: dict,
                 sharded: bool = False):
        self.sharded = sharded
        self.make_stream = make_stream
        self.d_in = d_in
        self.name = name
        self.seed = seed
        self.meta = meta
        self.n = None
        self._it = None
        self._rest = torch.empty(0, d_in)
        self._pending: list[torch.Tensor] = []

    def start(self, step: int) -> None:
        self._it = iter(self.make_stream(self.seed + 7919 * step))
        self._rest = torch.empty(0, self.d_in)

    def _next(self, batch_size: int) -> torch.Tensor:
        if self._pending:
            return self._pending.pop(0)
        chunks, have = [self._rest], self._rest.shape[0]
        while have < batch_size:
            try:
                chunk = next(self._it)
            except StopIteration:
                raise InputError(f"{self.name}: the dataset ran out of tokens; lower --tokens or use more text") from None
            if chunk.shape[-1] != self.d_in:
                raise InputError(f"{self.name}: activation width {chunk.shape[-1]} differs from d_in {self.d_in}")
            chunks.append(chunk.reshape(-1, self.d_in).float().cpu())
            have += chunks[-1].shape[0]
        x = torch.cat(chunks)
        self._rest = x[batch_size:]
        return x[:batch_size]

    def batch(self, step: int, batch_size: int, rank: int, world: int) -> torch.Tensor:
        if self.sharded:
            return self._next(batch_size // world)
        x = self._next(batch_size)
        per = x.shape[0] // world
        return x[rank * per:(rank + 1) * per]

    def sample(self, n: int) -> torch.Tensor:
        """The first training batches (kept, and trained on first) until ``n`` rows are seen."""
        got, total = [], 0
        while total < n:
            x = self._next(self._batch_size)
            got.append(x)
            total += x.shape[0]
        self._pending = list(got)
        return torch.cat(got)[:n]


def load_array_file(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                if not keys:
                    raise InputError(f"{path}: holds no tensor")
                key = "activations" if "activations" in keys else keys[0]
                if len(keys) > 1 and key != "activations":
                    raise InputError(f"{path}: holds {len(keys)} tensors; name the activations 'activations'")
                return f.get_tensor(key)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{path}: not a readable .safetensors file ({type(exc).__name__})") from None
    raise InputError(f"{path}: unsupported activations file; use .npy, .safetensors or an activation cache directory")


def resolve_source(source, cfg: TrainConfig, batch_size: int):
    from ..data.activations import ActivationCache, ActivationStream

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"{path}: no such activations file or directory")
        if path.is_dir():
            source = ActivationCache.open(path)
        else:
            return ArraySource(load_array_file(path), str(path), cfg.seed, {"activations": str(path)})
    if isinstance(source, ActivationCache):
        meta = {k: v for k, v in source.meta.items() if k in ("model", "hook", "dataset", "context_size", "prepend_bos")}
        meta["activations"] = str(source.path)
        return ArraySource(source, str(source.path), cfg.seed, meta)
    if isinstance(source, torch.Tensor):
        return ArraySource(source.detach(), "activations tensor", cfg.seed)
    if isinstance(source, np.ndarray):
        return ArraySource(source, "activations array", cfg.seed)
    if isinstance(source, ActivationStream):
        stream = source
        meta = {"model": getattr(stream.lm, "name", None), "hook": stream.hook}
        src = StreamSource(lambda seed: stream, stream.d_in, "activation stream", cfg.seed, meta)
        src._batch_size = batch_size
        return src
    if isinstance(source, tuple) and len(source) == 3:
        lm, hook, dataset = source
        return stream_from_model(lm, hook, dataset, cfg, batch_size)
    raise InputError(f"unsupported training source of type {type(source).__name__}; pass an [N, d_in] tensor/array, "
                     f"a .npy/.safetensors path, an ActivationCache, or (lm, hook, dataset)")


def stream_from_model(lm, hook, dataset, cfg: TrainConfig, batch_size: int):
    """Activations computed on the fly. Under DDP each rank runs the model on its own contexts only (every
    ``world``-th context of the same seeded order, from its rank on) and yields ``batch_size / world`` rows a step."""
    from ..data.activations import ActivationStream, _hook_width
    from ..data.text import iter_texts, token_contexts

    d_in = _hook_width(lm, hook)
    name = dataset if isinstance(dataset, str) else "texts"
    rank, world = ddp.rank(), ddp.world_size()
    per_rank = batch_size // world

    def make(seed):
        texts = iter_texts(dataset, split=cfg.dataset_split, column=cfg.dataset_column) if isinstance(dataset, str) \
            else iter(dataset)
        contexts = token_contexts(lm, texts, cfg.context_size, prepend_bos=cfg.prepend_bos, seed=seed)
        return ActivationStream(lm, hook, shard(contexts, rank, world), batch_size=per_rank,
                                buffer_tokens=max(1, cfg.buffer_tokens // world), seed=seed + rank,
                                exclude_special=cfg.exclude_special, harvest_batch_size=cfg.harvest_batch_size)

    meta = {"model": getattr(lm, "name", None), "hook": hook, "dataset": name, "context_size": cfg.context_size,
            "prepend_bos": cfg.prepend_bos}
    src = StreamSource(make, d_in, name, cfg.seed, meta, sharded=True)
    src._batch_size = per_rank
    return src


def shard(items, rank: int, world: int):
    """This rank's share of a sequence every rank produces in the same order: items rank, rank + world, ..."""
    return itertools.islice(items, rank, None, world) if world > 1 else items
