"""``.pt`` state dicts (``torch.save``) read without running code and without allocating what they claim.

A zip ``.pt`` holds ``<prefix>/data.pkl`` (a pickle describing the object) and one member per storage
(``<prefix>/data/<key>``). The pickle is read by an unpickler that resolves only the few names a state dict
uses (tensor and parameter rebuilds, storage types, ``OrderedDict``, dtypes), each to an inert placeholder;
any other global refuses the file. Before any tensor is allocated, every storage's declared size must equal
its member's size, every tensor must lie inside its storage, and the members may not claim more than
``MAX_RATIO`` times the file (see ``tensorio.py``). Tensors are then read one storage at a time.

Pre-zip (legacy) ``.pt`` files go through ``torch.load(weights_only=True)``: they are stored uncompressed, so
their sizes are bounded by the file itself.
"""
from __future__ import annotations

import contextlib
import io
import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from ...errors import CheckpointError
from .tensorio import LazyTensor, _little_endian, _readinto, check_zip_sizes, row_blocks

MAX_PICKLE = 16 * 2**20      # a state dict's pickle is a few KB; refuse absurd ones before reading them
MAX_DEPTH = 32
_STORAGE_DTYPES = {f"{name}Storage": getattr(torch, dt) for name, dt in (
    ("Float", "float32"), ("Double", "float64"), ("Half", "float16"), ("BFloat16", "bfloat16"), ("Long", "int64"),
    ("Int", "int32"), ("Short", "int16"), ("Char", "int8"), ("Byte", "uint8"), ("Bool", "bool"))}
_DTYPE_NAMES = {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "uint16",
                "uint32", "uint64", "bool", "float8_e4m3fn", "float8_e5m2"}


class _Inert:
    """Placeholders refuse pickle's BUILD (``__setstate__``), so a file cannot rewrite them after checks."""

    def __setstate__(self, state):
        raise _Refused("state on a placeholder object")


class _StorageType(_Inert):
    def __init__(self, dtype):
        self.dtype = dtype  # None: untyped (sizes in bytes)


class _Callable(_Inert):
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


class _StorageRef(_Inert):
    def __init__(self, key: str, dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel

    @property
    def nbytes(self) -> int:
        return self.numel * (1 if self.dtype is None else self.dtype.itemsize)


class _TensorRef(_Inert):
    def __init__(self, storage, offset, size, stride, dtype=None):
        if not isinstance(storage, _StorageRef):
            raise _Refused("a tensor without a storage")
        self.storage = storage
        self.offset = _int(offset)
        self.size = tuple(_int(s) for s in _seq(size))
        self.stride = tuple(_int(s) for s in _seq(stride))
        self.dtype = dtype if dtype is not None else storage.dtype
        if len(self.size) != len(self.stride) or len(self.size) > 8 or self.dtype is None:
            raise _Refused("a tensor with an inconsistent size/stride/dtype")


class _Refused(Exception):
    pass


def _int(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > 2**62:
        raise _Refused(f"a tensor with an invalid size or offset {str(v)[:30]}")
    return v


def _seq(v):
    if not isinstance(v, (tuple, list)):
        raise _Refused("a tensor with a non-sequence size or stride")
    return v


def _rebuild_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _TensorRef(storage, offset, size, stride)


def _rebuild_v3(storage, offset, size, stride, requires_grad=False, backward_hooks=None, dtype=None, metadata=None):
    if not isinstance(dtype, torch.dtype):
        raise _Refused("a tensor without a dtype")
    return _TensorRef(storage, offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise _Refused("a parameter that is not a tensor")
    return data


_CALLABLES = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_v2, ("torch._utils", "_rebuild_tensor_v3"): _rebuild_v3,
              ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
              ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
              ("collections", "OrderedDict"): OrderedDict}
_STORAGES = {("torch.storage", "UntypedStorage"): None, ("torch", "UntypedStorage"): None,
             **{("torch", name): dt for name, dt in _STORAGE_DTYPES.items()}}
_DTYPES = {("torch", name): getattr(torch, name) for name in _DTYPE_NAMES}


class _Unpickler(pickle.Unpickler):
    """Resolves only inert placeholders; storages become ``_StorageRef`` (nothing is read or allocated)."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module, name):  # fresh placeholders each time: nothing shared can be altered
        key = (module, name)
        if key in _CALLABLES:
            return _Callable(_CALLABLES[key])
        if key in _STORAGES:
            return _StorageType(_STORAGES[key])
        if key in _DTYPES:  # torch.dtype objects are immutable
            return _DTYPES[key]
        raise _Refused(f"global {str(module)[:60]}.{str(name)[:60]}")

    def persistent_load(self, pid):
        ok = isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
        if not ok or not isinstance(pid[2], str) or not isinstance(pid[3], str):
            raise _Refused("an unknown persistent id")
        ref = _StorageRef(pid[2], pid[1].dtype, _int(pid[4]))
        seen = self.storages.setdefault(ref.key, ref)
        if seen.dtype != ref.dtype or seen.numel != ref.numel:
            raise _Refused(f"storage {ref.key!r} declared twice with different sizes")
        return seen


def load_pt(path: Path) -> dict:
    """A ``.pt`` state dict: tensors (as ``LazyTensor``), numbers, strings, lists and dicts only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):
        return _load_legacy(path)
    try:
        with zipfile.ZipFile(path) as zf:
            obj, storages, prefix = _scan(path, zf)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated .pt file ({msg[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return _resolve(obj, path, prefix, 0)


def _scan(path: Path, zf: zipfile.ZipFile):
    names = {i.filename: i for i in zf.infolist()}
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise CheckpointError(f"{path}: not a torch.save archive (no single <prefix>/data.pkl)")
    prefix = pkls[0][: -len("data.pkl")]
    check_zip_sizes(path, zf, ".pt")
    order = names.get(prefix + "byteorder")
    if order is not None and zf.read(order).strip() not in (b"little", b""):
        raise CheckpointError(f"{path}: saved on a big-endian machine; re-save it on a little-endian one")
    if names[pkls[0]].file_size > MAX_PICKLE:
        raise CheckpointError(f"{path}: data.pkl claims {names[pkls[0]].file_size} bytes (a state dict needs a few KB)")
    unpickler = _Unpickler(zf.read(pkls[0]))
    try:
        obj = unpickler.load()
    except _Refused as exc:
        raise CheckpointError(f"{path}: refused to load: the file holds pickled objects other than tensors "
                              f"({exc})") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError,
            RecursionError, OverflowError, MemoryError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt .pt pickle ({type(exc).__name__})") from None
    for ref in unpickler.storages.values():
        info = names.get(f"{prefix}data/{ref.key}")
        if info is None or info.file_size != ref.nbytes:
            have = "missing" if info is None else f"{info.file_size} bytes"
            raise CheckpointError(f"{path}: storage {ref.key!r} declares {ref.nbytes} bytes, its data is {have}: "
                                  f"the file is corrupt")
    return obj, unpickler.storages, prefix


def _resolve(obj, path: Path, prefix: str, depth: int):
    if depth > MAX_DEPTH:
        raise CheckpointError(f"{path}: state dict nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, _TensorRef):
        return _lazy(obj, path, prefix)
    if isinstance(obj, dict):
        return {k: _resolve(v, path, prefix, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, path, prefix, depth + 1) for v in obj)
    if isinstance(obj, (_StorageRef, _StorageType)):
        raise CheckpointError(f"{path}: holds a bare storage, not a state dict")
    return obj


def _lazy(ref: _TensorRef, path: Path, prefix: str) -> LazyTensor:
    itemsize = ref.dtype.itemsize
    if math.prod(ref.size):  # the furthest element must lie inside the storage
        last = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride))
        if (last + 1) * itemsize > ref.storage.nbytes:
            raise CheckpointError(f"{path}: a tensor of shape {list(ref.size)} reaches past its storage "
                                  f"{ref.storage.key!r} ({ref.storage.nbytes} bytes): the file is corrupt")
    member = f"{prefix}data/{ref.storage.key}"

    def read():
        _little_endian(str(path))
        raw = torch.empty(ref.storage.nbytes, dtype=torch.uint8)
        try:
            with zipfile.ZipFile(path) as zf, zf.open(member) as f:
                _readinto(f, raw, f"{path}: storage {ref.storage.key!r}")
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: storage {ref.storage.key!r} is corrupt ({str(exc)[:100]})") from None
        flat = raw[: raw.numel() // itemsize * itemsize].view(ref.dtype)
        return flat.as_strided(ref.size, ref.stride, ref.offset)

    what = f"{path}: storage {ref.storage.key!r}"
    c_strides = tuple(math.prod(ref.size[i + 1:]) for i in range(len(ref.size)))
    if ref.stride == c_strides or math.prod(ref.size) <= 1:  # C-ordered: stream rows from the member
        return LazyTensor(ref.size, ref.dtype, read, what, blocks=row_blocks(_member_at(path, member, ref.offset * itemsize),
                                                                            ref.size, ref.dtype, what))
    if len(ref.size) == 2 and ref.stride == (1, ref.size[0]):  # a saved transpose: stream its stored rows
        stored = (ref.size[1], ref.size[0])
        lazy = LazyTensor(stored, ref.dtype, lambda: read().T, what,
                          blocks=row_blocks(_member_at(path, member, ref.offset * itemsize), stored, ref.dtype, what))
        return lazy.T
    return LazyTensor(ref.size, ref.dtype, read, what)


def _member_at(path: Path, member: str, skip: int):
    @contextlib.contextmanager
    def open_at():
        _little_endian(str(path))
        try:
            with zipfile.ZipFile(path) as zf, zf.open(member) as f:
                if skip:
                    f.seek(skip)
                yield f
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: storage member {member!r} is corrupt ({str(exc)[:100]})") from None
    return open_at


def _load_legacy(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise CheckpointError(f"{path}: refused to load: the file holds pickled objects other than tensors ({first[:200]})") from None
    except (RuntimeError, EOFError, ValueError, OSError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated .pt file ({msg[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj
