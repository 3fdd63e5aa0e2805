"""Tensors from untrusted files, read one at a time and only after every declared size has been checked.

A reader first builds an *index*: ``{name: LazyTensor}`` from the file's own header (safetensors header, the
``.npy`` headers inside an ``.npz``, the pickle of a ``.pt``; see ``torchfile.py``). Each declared shape is
checked against the bytes the file really holds before anything is allocated; loaders then compare the
shapes with their config and with each other, and ``SAE.from_state_dict`` reads the tensors one by one
straight into their final buffers (``readinto``), converting the dtype tensor by tensor. A 1 GB SAE thus
needs about 1 GB of memory to load, not 2-3 GB, and a small file that claims a large tensor is refused
before any allocation.

Compressed archives (``.npz``, zip ``.pt``) are also refused when their members claim more than
``MAX_RATIO`` times the archive's size: a zip header's uncompressed size is as untrusted as any other
number in the file, and the decompressor stops at it (a member that inflates past it fails its CRC).
"""
from __future__ import annotations

import contextlib
import json
import math
import struct
import sys
import zipfile
from pathlib import Path
from typing import Callable

import torch

from ..._checks import check_alloc, checked_int
from ...errors import CheckpointError

MAX_HEADER = 100 * 2**20       # largest safetensors JSON header accepted
MAX_RATIO = 64                 # declared uncompressed bytes per byte of a compressed archive (plus SLACK)
SLACK = 2**20
_MAX_DIM = 2**48               # a single dimension; the real bound is the bytes the file holds

ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool,
             "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


BLOCK_BYTES = 16 * 2**20      # rows read at a time when streaming a tensor into its final buffer


class LazyTensor:
    """A tensor whose shape and dtype are known (from a checked header) and whose data is read on demand.

    ``load()`` reads it whole (in the file's dtype). ``load_as(dtype, device)`` streams it: blocks of rows are
    read, checked finite and copied (converted) into the final buffer, so loading in bfloat16 never holds a
    float32 copy, and a transposed layout (``.T``, e.g. ``encoder.weight [d_sae, d_in]`` as ``W_enc``) is
    written straight into place. ``map`` adds arbitrary post-processing (then ``load_as`` reads whole).
    """

    def __init__(self, shape, dtype: torch.dtype, read: Callable[[], torch.Tensor], source: str,
                 post: tuple = (), blocks=None, transposed: bool = False):
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self._read = read
        self.source = source
        self._post = post
        self._blocks = blocks          # blocks(rows_per_block) -> iterator of (first_row, rows) of the stored layout
        self._transposed = transposed  # the stored layout is the transpose of ``shape`` (2-D)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel() * self.dtype.itemsize

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor], shape=None) -> "LazyTensor":
        return LazyTensor(self.shape if shape is None else shape, self.dtype, self._read, self.source,
                          self._post + (fn,), None, self._transposed)

    @property
    def T(self) -> "LazyTensor":
        if self.ndim != 2:
            raise CheckpointError(f"{self.source}: expected a 2-D tensor, got shape {list(self.shape)}")
        if self._post:
            return self.map(lambda t: t.T, shape=(self.shape[1], self.shape[0]))
        return LazyTensor((self.shape[1], self.shape[0]), self.dtype, self._read, self.source, (), self._blocks,
                          not self._transposed)

    def load(self) -> torch.Tensor:
        t = self._read()
        if self._transposed:
            t = t.T
        for fn in self._post:
            t = fn(t)
        return t

    def load_as(self, dtype: torch.dtype, device, what: str) -> torch.Tensor:
        """The tensor in ``dtype`` on ``device``, contiguous, checked finite (CheckpointError naming ``what``)."""
        if self._blocks is None or self._post or self.ndim == 0:
            return finite_copy(self.load(), dtype, device, what)
        dest = torch.empty(self.shape, dtype=dtype, device=device)
        view = dest.T if self._transposed else dest
        row = max(1, math.prod(view.shape[1:]) * self.dtype.itemsize)
        for first, rows in self._blocks(max(1, BLOCK_BYTES // row)):
            if not all_finite(rows):
                raise CheckpointError(f"{what} contains NaN or inf values")
            part = view[first:first + rows.shape[0]]
            part.copy_(rows)
            if dtype != rows.dtype and not all_finite(part):
                raise CheckpointError(f"{what} overflows {str(dtype).replace('torch.', '')}; load it in float32")
        return dest

    def __repr__(self) -> str:
        return f"LazyTensor({list(self.shape)}, {self.dtype}, {self.source})"


def all_finite(t: torch.Tensor, chunk: int = 2**22) -> bool:
    """``torch.isfinite(t).all()``, fast: a NaN or inf anywhere makes the (vectorised, ~30x faster) sum
    non-finite, so a finite sum proves the tensor finite; only a non-finite sum (a bad value, or a sum that
    overflowed) is settled element by element, in chunks (no mask the size of the tensor)."""
    if t.numel() and t.is_floating_point():
        if bool(torch.isfinite(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32))):
            return True
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def finite_copy(t: torch.Tensor, dtype: torch.dtype, device, what: str) -> torch.Tensor:
    """``t`` checked finite, converted to ``dtype`` on ``device`` (contiguous), checked again for overflow."""
    t = t.detach()
    if not all_finite(t):
        raise CheckpointError(f"{what} contains NaN or inf values")
    out = t.to(device=device, dtype=dtype).contiguous()
    if out.dtype != t.dtype and not all_finite(out):
        raise CheckpointError(f"{what} overflows {str(dtype).replace('torch.', '')}; load it in float32")
    return out


def row_blocks(open_at: Callable, stored_shape, dtype: torch.dtype, what: str):
    """``blocks(per)`` for a C-ordered array of ``stored_shape`` whose bytes ``open_at()`` yields from a stream
    positioned at its first element (a context manager)."""
    rows, rest = (stored_shape[0], tuple(stored_shape[1:])) if stored_shape else (1, ())

    def blocks(per: int):
        with open_at() as f:
            for first in range(0, rows, per):
                n = min(per, rows - first)
                yield first, _readinto(f, torch.empty((n, *rest), dtype=dtype), what)

    return blocks


def is_tensor(x) -> bool:
    return isinstance(x, (torch.Tensor, LazyTensor))


def materialize(x):
    """A real tensor from a ``LazyTensor`` (anything else is returned as is)."""
    return x.load() if isinstance(x, LazyTensor) else x


def nbytes(x) -> int:
    return x.nbytes if isinstance(x, LazyTensor) else x.numel() * x.element_size()


def _readinto(f, t: torch.Tensor, what: str) -> torch.Tensor:
    """Fill the contiguous tensor ``t`` from the binary stream ``f`` (exactly its size, or CheckpointError)."""
    if t.numel() == 0:
        return t
    view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    done = 0
    while done < len(view):  # at most 16 MiB a call: a zip stream's readinto buffers what it is asked for
        n = f.readinto(view[done:done + 2**24])
        if not n:
            raise CheckpointError(f"{what}: truncated (ends after {done} of {len(view)} bytes)")
        done += n
    return t


def _dims(shape, what: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > 8:
        raise CheckpointError(f"{what}: invalid shape {str(shape)[:60]}")
    return tuple(checked_int(d, f"{what}: shape", lo=0, hi=_MAX_DIM, error=CheckpointError) for d in shape)


def _little_endian(what: str) -> None:
    if sys.byteorder != "little":
        raise CheckpointError(f"{what}: reading weights needs a little-endian machine")


# ---- safetensors ------------------------------------------------------------------------------------
def safetensors_header(path: Path) -> tuple[dict, int]:
    """``(header, data_start)`` of a safetensors file, after checking every tensor fits in the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: corrupt or truncated safetensors header (claims {n} bytes, file has {size})")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a safetensors file") from None
    except (ValueError, UnicodeDecodeError, RecursionError):  # JSONDecodeError, over-long integers, nesting
        raise CheckpointError(f"{path}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header")
    data_size = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        what = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or not isinstance(info.get("data_offsets"), list) or len(info["data_offsets"]) != 2:
            raise CheckpointError(f"{what}: corrupt safetensors entry")
        dtype = info.get("dtype")
        if not isinstance(dtype, str) or dtype not in ST_DTYPES:
            raise CheckpointError(f"{what}: unknown dtype {str(dtype)[:20]!r}")
        shape = _dims(info.get("shape"), what)
        begin, end = (checked_int(v, f"{what}: data_offsets", lo=0, error=CheckpointError) for v in info["data_offsets"])
        if not (begin <= end <= data_size) or end - begin != math.prod(shape) * ST_DTYPES[dtype].itemsize:
            raise CheckpointError(f"{what} {list(shape)} lies outside the file ({data_size} data bytes): "
                                  f"the file is truncated or corrupt, download it again")
    return header, 8 + n


def safetensors_index(path: Path) -> dict[str, LazyTensor]:
    """``{name: LazyTensor}`` for a checked safetensors file; each ``load()`` reads one tensor from disk."""
    path = Path(path)
    header, start = safetensors_header(path)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape, dtype, begin = tuple(info["shape"]), ST_DTYPES[info["dtype"]], start + info["data_offsets"][0]

        def read(shape=shape, dtype=dtype, begin=begin, name=name):
            _little_endian(str(path))
            t = torch.empty(shape, dtype=dtype)
            try:
                with open(path, "rb") as f:
                    f.seek(begin)
                    return _readinto(f, t, f"{path}: tensor {name!r}")
            except OSError as exc:
                raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None

        out[name] = LazyTensor(tuple(int(d) for d in shape), dtype, read, f"{path}: tensor {name!r}",
                               blocks=row_blocks(_file_at(path, begin), shape, dtype, f"{path}: tensor {name!r}"))
    return out


def _file_at(path: Path, offset: int):
    @contextlib.contextmanager
    def open_at():
        _little_endian(str(path))
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                yield f
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return open_at


# ---- zip archives (npz, and the zip .pt format) -----------------------------------------------------
def check_zip_sizes(path: Path, zf: zipfile.ZipFile, what: str = "archive") -> int:
    """Refuse an archive whose members claim far more than the file holds (a compression bomb) or than
    this machine can allocate. Returns the total declared uncompressed size."""
    size = Path(path).stat().st_size
    total = sum(i.file_size for i in zf.infolist())
    if total > MAX_RATIO * size + SLACK:
        raise CheckpointError(f"{path}: {what} members claim {total} bytes uncompressed, more than {MAX_RATIO}x "
                              f"the {size}-byte file (a compression bomb?): refused")
    check_alloc(total, f"{path}: loading this {what}", error=CheckpointError)
    return total


def _npy_header(f, path: Path, member: str):
    import numpy as np

    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise CheckpointError(f"{path}: array {member!r} has an unsupported .npy version {version}")
    if dtype.hasobject or dtype.kind not in "fiub" or dtype.subdtype is not None or dtype.names:
        raise CheckpointError(f"{path}: array {member!r} has dtype {dtype} (holds Python objects or is not numeric; refused)")
    return _dims(shape, f"{path}: array {member!r}"), bool(fortran), dtype


def npz_index(path: Path) -> dict[str, LazyTensor]:
    """``{name: LazyTensor}`` for an ``.npz`` archive (no pickles), member headers checked against their sizes."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            check_zip_sizes(path, zf, "npz")
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    shape, fortran, dtype = _npy_header(f, path, info.filename)
                    offset = f.tell()
                if offset + math.prod(shape) * dtype.itemsize != info.file_size:
                    raise CheckpointError(f"{path}: array {info.filename!r} claims shape {list(shape)} ({dtype}), "
                                          f"which does not match its {info.file_size} bytes: the file is corrupt")
                name = info.filename[: -len(".npy")]
                tdtype = torch.from_numpy(np.zeros(0, dtype=dtype.newbyteorder("="))).dtype
                what = f"{path}: array {name!r}"
                native = dtype.byteorder in ("=", "|") or (dtype.byteorder == "<") == (sys.byteorder == "little")
                stored = tuple(reversed(shape)) if fortran else shape
                blocks = row_blocks(_member_at(path, info.filename), stored, tdtype, what) if native else None
                out[name] = LazyTensor(stored, tdtype, _npz_reader(path, info.filename, shape, fortran, dtype), what,
                                       blocks=blocks)
                if fortran:  # stored transposed: present it in its logical shape
                    out[name] = out[name].T if len(shape) == 2 else out[name].map(
                        lambda t: t.permute(*reversed(range(t.ndim))), shape=shape)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated .npz archive ({msg[:200]})") from None
    return out


def _member_at(path: Path, member: str):
    @contextlib.contextmanager
    def open_at():
        try:
            with zipfile.ZipFile(path) as zf, zf.open(member) as f:
                _npy_header(f, path, member)
                yield f
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path}: array {member!r} is corrupt ({msg[:200]})") from None
    return open_at


def _npz_reader(path: Path, member: str, shape, fortran: bool, dtype):
    import numpy as np

    def read():
        what = f"{path}: array {member!r}"
        try:
            with zipfile.ZipFile(path) as zf, zf.open(member) as f:
                _npy_header(f, path, member)
                stored = tuple(reversed(shape)) if fortran else shape
                native = dtype.byteorder in ("=", "|") or (dtype.byteorder == "<") == (sys.byteorder == "little")
                if native:
                    t = _readinto(f, torch.from_numpy(np.empty(stored, dtype=dtype.newbyteorder("="))), what)
                else:  # stored big-endian: read, then swap into native order
                    raw = _readinto(f, torch.empty(math.prod(stored) * dtype.itemsize, dtype=torch.uint8), what)
                    t = torch.from_numpy(raw.numpy().view(dtype).reshape(stored).astype(dtype.newbyteorder("=")))
                if f.read(1):
                    raise CheckpointError(f"{what}: more data than its header declares")
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{what}: corrupt data ({msg[:200]})") from None
        return t  # in the stored layout; the LazyTensor presents a Fortran-ordered array transposed

    return read
