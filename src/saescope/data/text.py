"""Text sources and fixed-length token contexts.

``iter_texts`` yields documents from a Hugging Face dataset (by name; streaming) or from local ``.txt``
(one document per file), ``.jsonl`` (one per line, field ``column``) and ``.parquet`` (column ``column``)
files or folders of them. ``token_contexts`` concatenates documents separated by the EOS token and cuts
fixed-length contexts, each starting with BOS when ``prepend_bos`` (the rule the SAE will be used with),
then shuffles them with a seeded buffer.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Iterable, Iterator

import torch

from ..errors import InputError

log = logging.getLogger(__name__)
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise InputError(f"{path}: no .txt, .jsonl or .parquet files in this folder")
    return files


def _iter_file(path: Path, column: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield path.read_text(encoding="utf-8", errors="replace")
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise InputError(f"{path}:{lineno}: not valid JSON") from None
                if not isinstance(row, dict) or column not in row:
                    keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                    raise InputError(f"{path}:{lineno}: no column {column!r} (found: {keys}); pass --column")
                yield str(row[column])
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if column not in names:
            raise InputError(f"{path}: no column {column!r} (found: {', '.join(names)}); pass --column")
        for batch in pf.iter_batches(columns=[column]):
            for value in batch.column(0).to_pylist():
                if value is not None:
                    yield str(value)
    else:
        raise InputError(f"{path}: unsupported text file; use .txt, .jsonl or .parquet")


def _iter_hf(name: str, split: str, column: str, streaming: bool) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise InputError(f"{name}: not a local file or folder, and the 'datasets' package is not installed") from None
    try:
        ds = datasets.load_dataset(name, split=split, streaming=streaming)
    except Exception as exc:  # offline, unknown name, bad split: one line
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{name}: cannot load the dataset (split {split!r}): {msg[:200]}") from None
    names = getattr(ds, "column_names", None)
    if names is not None and column not in names:
        raise InputError(f"{name}: no column {column!r} (found: {', '.join(names)}); pass --column")
    for row in ds:
        if column not in row:
            raise InputError(f"{name}: no column {column!r} (found: {', '.join(sorted(row))}); pass --column")
        value = row[column]
        if value is not None:
            yield str(value)


def iter_texts(source: str, split: str = "train", column: str = "text", streaming: bool = True) -> Iterator[str]:
    """Documents of a dataset or local file/folder, in order. An empty source raises ``InputError``."""
    path = Path(source)
    if path.exists():
        inner = (t for f in _local_files(path) for t in _iter_file(f, column))
    elif any(str(source).endswith(s) for s in TEXT_SUFFIXES) or "/" in str(source) and str(source).startswith((".", "/")):
        raise InputError(f"{source}: no such file or folder")
    else:
        inner = _iter_hf(str(source), split, column, streaming)
    n = 0
    for text in inner:
        if text.strip():
            n += 1
            yield text
    if n == 0:
        raise InputError(f"{source}: the dataset is empty (no non-blank text in column {column!r})")


def _special_ids(lm) -> tuple[int | None, int | None]:
    info = getattr(lm, "info", None)
    tok = lm.tokenizer
    bos = getattr(info, "bos_token_id", None) if info is not None else None
    eos = getattr(info, "eos_token_id", None) if info is not None else None
    bos = bos if bos is not None else tok.bos_token_id
    eos = eos if eos is not None else tok.eos_token_id
    if bos is None:
        bos = eos
    if eos is None:
        eos = bos
    return bos, eos


def token_contexts(lm, texts: Iterable[str], context_size: int, prepend_bos: bool = True, seed: int = 0,
                   shuffle_buffer: int = 1024) -> Iterator[torch.Tensor]:
    """Documents -> LongTensor [context_size] contexts.

    Documents are concatenated with the EOS token between them; each context holds ``context_size`` tokens
    (the first is BOS when ``prepend_bos``). The final partial context is dropped. Contexts pass through a
    seeded shuffle buffer of ``shuffle_buffer`` contexts (0 or 1 keeps the order).
    """
    if context_size < 2 and prepend_bos:
        raise InputError(f"context_size: must be at least 2 with prepend_bos, got {context_size}")
    bos, eos = _special_ids(lm)
    if prepend_bos and bos is None:
        raise InputError("prepend_bos: the tokenizer has no BOS or EOS token; pass prepend_bos=False")
    body = context_size - (1 if prepend_bos else 0)
    rng = random.Random(seed)
    buf: list[torch.Tensor] = []
    pending: list[int] = []

    def contexts():
        nonlocal pending
        first = True
        for text in texts:
            ids = lm.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # saescope cuts contexts itself
            if not first and eos is not None:
                pending.append(eos)
            first = False
            pending.extend(ids)
            while len(pending) >= body:
                chunk, pending = pending[:body], pending[body:]
                yield torch.tensor(([bos] if prepend_bos else []) + chunk, dtype=torch.long)

    for ctx in contexts():
        if shuffle_buffer <= 1:
            yield ctx
            continue
        if len(buf) < shuffle_buffer:
            buf.append(ctx)
            continue
        i = rng.randrange(len(buf))
        buf[i], ctx = ctx, buf[i]
        yield ctx
    rng.shuffle(buf)
    yield from buf


def contexts_from(lm, source, context_size: int, prepend_bos: bool = True, seed: int = 0, split: str = "train",
                  column: str = "text", shuffle_buffer: int = 1024) -> Iterator[torch.Tensor]:
    """LongTensor ``[ctx]`` contexts from any source a user may give: an integer tensor ``[n, ctx]`` (its rows, as
    they are), an iterable of texts, or a dataset name / local file or folder (``iter_texts``)."""
    if isinstance(source, torch.Tensor):
        if source.dim() != 2 or source.dtype not in (torch.int64, torch.int32):
            raise InputError(f"token source must be an integer tensor [n, ctx], got {tuple(source.shape)} {source.dtype}")
        yield from source.long()
        return
    texts = iter_texts(source, split=split, column=column) if isinstance(source, (str, Path)) else source
    yield from token_contexts(lm, texts, context_size, prepend_bos=prepend_bos, seed=seed, shuffle_buffer=shuffle_buffer)
