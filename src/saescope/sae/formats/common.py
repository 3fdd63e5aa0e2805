"""Careful file I/O shared by the format modules: validated reads, atomic writes.

Nothing read here is ever executed: ``.pt`` files go through ``torch.load(weights_only=True)``,
``.npz`` through ``numpy.load(allow_pickle=False)``, and a safetensors header is checked against the
file size before any tensor is allocated.
"""
from __future__ import annotations

import json
import logging
import math
import os
import struct
import tempfile
import zipfile
from pathlib import Path

import torch

from ..._io import atomic_write_path
from ...errors import CheckpointError

log = logging.getLogger(__name__)

_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100 * 2**20


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or CheckpointError naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); the file is corrupt, download it again") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def safetensors_header(path: Path) -> dict:
    """The header of a safetensors file, after checking every tensor fits in the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: corrupt or truncated safetensors header (claims {n} bytes, file has {size})")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header")
    data_size = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            numel = math.prod(int(d) for d in shape)
            if dtype not in _ST_ITEMSIZE or min(shape, default=0) < 0:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors entry for tensor {name!r}") from None
        if not (0 <= begin <= end <= data_size) or end - begin != numel * _ST_ITEMSIZE[dtype]:
            raise CheckpointError(f"{path}: tensor {name!r} {shape} lies outside the file "
                                  f"({data_size} data bytes): the file is truncated or corrupt, download it again")
    return header


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a validated safetensors file, on the CPU."""
    from safetensors.torch import load_file

    safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read safetensors ({exc})") from None


def load_pt(path: Path) -> dict:
    """A ``.pt`` state dict through ``torch.load(weights_only=True)``: tensors, numbers, strings, dicts only."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise CheckpointError(f"{path}: refused to load: the file holds pickled objects other than tensors ({first[:200]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated .pt file ({msg[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def load_npz(path: Path) -> dict[str, torch.Tensor]:
    """Arrays of an ``.npz`` archive (no pickles) as float tensors."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    _check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt, truncated or pickled .npz archive ({msg[:200]})") from None


def _check_npz_sizes(path: Path) -> None:
    """Every array's header shape must fit in its (uncompressed) zip member before numpy allocates it."""
    import numpy as np

    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                if dtype.hasobject:
                    raise CheckpointError(f"{path}: array {info.filename!r} holds Python objects (refused)")
                if math.prod(shape) * dtype.itemsize > info.file_size:
                    raise CheckpointError(f"{path}: array {info.filename!r} claims shape {list(shape)}, more than its "
                                          f"{info.file_size} bytes: the file is corrupt")
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated .npz archive ({msg[:200]})") from None


def check_state(cfg, state: dict, source: str) -> None:
    """Names, shapes and finiteness of SAELens-named tensors against ``cfg``; CheckpointError naming ``source``."""
    from ..model import param_shapes

    for name, shape in param_shapes(cfg).items():
        if name not in state:
            raise CheckpointError(f"{source}: missing tensor {name!r} for a {cfg.architecture} SAE")
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{source}: {name!r} is not a tensor")
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{source}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)} "
                                  f"from the config (d_in={cfg.d_in}, d_sae={cfg.d_sae})")
        if not t.is_floating_point():
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {str(t.dtype).replace('torch.', '')}, "
                                  f"expected a floating-point tensor")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{source}: tensor {name!r} contains NaN or inf values")


# ---- atomic writes ----------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"{path.parent}: cannot create the directory ({exc.strerror})") from None
    atomic_write_path(path, write)   # temp file (umask's mode), fsync, replace; a full disk -> DiskFullError


def make_temp_dir(target: Path) -> Path:
    """A fresh directory beside ``target`` (normal permissions), to be renamed onto it when complete."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def atomic_write_json(path: Path, obj) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")

    _atomic(path, write)


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
