"""Careful file I/O shared by the format modules: validated reads, atomic writes.

Nothing read here is ever executed: ``.pt`` files go through a restricted unpickler (``torchfile.py``),
``.npz`` members are read as raw arrays (no pickles), and every declared tensor size is checked against the
file before anything is allocated (``tensorio.py``). The ``*_index`` readers return ``LazyTensor``s, read one
at a time by ``SAE.from_state_dict``; ``load_*`` return plain tensors.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from ..._checks import MAX_DIM, checked_float, checked_int
from ..._io import atomic_write_path
from ...errors import CheckpointError
from .tensorio import LazyTensor, finite_copy, is_tensor, materialize, npz_index, safetensors_index
from .tensorio import safetensors_header as _st_header
from .torchfile import load_pt as pt_index

log = logging.getLogger(__name__)

__all__ = ["read_json", "safetensors_header", "safetensors_index", "npz_index", "pt_index", "load_safetensors",
           "load_pt", "load_npz", "check_state", "LazyTensor", "is_tensor", "materialize", "cfg_int", "cfg_float",
           "cfg_str", "cfg_dict"]


def read_json(path: Path, max_bytes: int = 16 * 2**20) -> dict:
    """A JSON object from ``path``, or CheckpointError naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size > max_bytes:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, too large for a config file")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError, >4300-digit ints, nesting
        reason = str(exc)[:120] if isinstance(exc, ValueError) else type(exc).__name__
        raise CheckpointError(f"{path}: not valid JSON ({reason}); the file is corrupt, download it again") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# ---- fields of config files: one checked accessor per kind, every number through saescope._checks ----------
_MISSING = object()


def cfg_int(raw: dict, key: str, source, lo: int | None = 1, hi: int | None = MAX_DIM, default=_MISSING):
    """``raw[key]`` as a range-checked int (``default`` when absent or null, else CheckpointError)."""
    value = raw.get(key) if isinstance(raw, dict) else None
    if value is None:
        if default is _MISSING:
            raise CheckpointError(f"{source}: missing field {key!r}")
        return default
    return checked_int(value, f"{source}: {key}", lo=lo, hi=hi, error=CheckpointError)


def cfg_float(raw: dict, key: str, source, lo=None, hi=None, default=_MISSING, **kw) -> float:
    value = raw.get(key) if isinstance(raw, dict) else None
    if value is None:
        if default is _MISSING:
            raise CheckpointError(f"{source}: missing field {key!r}")
        return default
    return checked_float(value, f"{source}: {key}", lo=lo, hi=hi, error=CheckpointError, **kw)


def cfg_str(raw: dict, key: str, source, default=None, choices=None) -> str | None:
    value = raw.get(key) if isinstance(raw, dict) else None
    if value is None:
        return default
    if not isinstance(value, str) or (choices is not None and value not in choices):
        shown = f" (expected one of {', '.join(map(str, choices))})" if choices is not None else ""
        raise CheckpointError(f"{source}: {key} has an unsupported value {str(value)[:60]!r}{shown}")
    return value


def cfg_bool(raw: dict, key: str, source, default: bool) -> bool:
    value = raw.get(key) if isinstance(raw, dict) else None
    if value is None:
        return default
    if not isinstance(value, bool):
        raise CheckpointError(f"{source}: {key} must be true or false, got {str(value)[:40]!r}")
    return value


def cfg_dict(raw: dict, key: str, source) -> dict:
    value = raw.get(key) if isinstance(raw, dict) else None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: {key} must be a JSON object, got {type(value).__name__}")
    return value


# ---- tensors -------------------------------------------------------------------------------------------
def safetensors_header(path: Path) -> dict:
    """The header of a safetensors file, after checking every tensor fits in the file."""
    return _st_header(path)[0]


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a validated safetensors file, on the CPU."""
    return {k: v.load() for k, v in safetensors_index(path).items()}


def load_npz(path: Path) -> dict[str, torch.Tensor]:
    """Arrays of an ``.npz`` archive (no pickles) as tensors."""
    return {k: v.load() for k, v in npz_index(path).items()}


def load_pt(path: Path) -> dict:
    """A ``.pt`` state dict (tensors, numbers, strings, dicts only); tensors read into memory."""
    return _materialize_all(pt_index(path))


def _materialize_all(obj):
    if isinstance(obj, dict):
        return {k: _materialize_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize_all(v) for v in obj)
    return materialize(obj)


def check_state(cfg, state: dict, source: str) -> None:
    """Names, shapes and dtypes of SAELens-named tensors (or ``LazyTensor``s) against ``cfg``, before any is
    read; CheckpointError naming ``source``. Finiteness is checked as each tensor is read
    (``SAE.from_state_dict``)."""
    from ..model import param_shapes

    for name, shape in param_shapes(cfg).items():
        if name not in state:
            raise CheckpointError(f"{source}: missing tensor {name!r} for a {cfg.architecture} "
                                  f"{'transcoder' if cfg.is_transcoder else 'SAE'}")
        t = state[name]
        if not is_tensor(t):
            raise CheckpointError(f"{source}: {name!r} is not a tensor")
        if tuple(t.shape) != shape:
            raise CheckpointError(f"{source}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)} "
                                  f"from the config (d_in={cfg.d_in}, d_sae={cfg.d_sae}"
                                  f"{f', d_out={cfg.d_out}' if cfg.is_transcoder else ''})")
        if not t.is_floating_point() or t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {str(t.dtype).replace('torch.', '')}, "
                                  f"expected float16, bfloat16, float32 or float64")


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


# ---- building an SAE from a state dict ----------------------------------------------------------------
def assemble(cls, cfg, state: dict, device=None, dtype=None, source: str = "state dict"):
    """``cls`` (SAE) from SAELens-named tensors or ``LazyTensor``s: shapes and dtypes are checked before
    anything is read, the memory the SAE needs is checked against what is available, then each tensor is read
    (or taken), checked finite, converted to ``dtype`` on ``device`` and assigned, one at a time."""
    import math

    from torch import nn

    from ..._checks import check_alloc
    from ..model import dtype_name, param_shapes, torch_dtype

    check_state(cfg, state, source)
    target = torch_dtype(dtype or cfg.dtype)
    device = torch.device(device or "cpu")
    if device.type == "cpu":
        need = sum(math.prod(s) for s in param_shapes(cfg).values()) * target.itemsize
        check_alloc(need, f"{source}: this SAE ({cfg.d_in}x{cfg.d_sae})", error=CheckpointError)
    sae = cls(cfg, device="meta")
    for name in param_shapes(cfg):
        value, what = state[name], f"{source}: tensor {name!r}"
        if isinstance(value, LazyTensor):  # streamed into its final dtype and place, a block of rows at a time
            converted = value.load_as(target, device, what)
        else:
            converted = finite_copy(value, target, device, what)
        setattr(sae, name, nn.Parameter(converted))
    if dtype_name(target) != cfg.dtype:
        sae.cfg = cfg.replace(dtype=dtype_name(target))
    return sae
