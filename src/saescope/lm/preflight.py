"""Check a model directory's config.json against the weights on disk before anything is instantiated.

A config that claims 100,000 layers or a vocabulary of 10^9 next to a few megabytes of weights would make
``from_pretrained`` allocate (and randomly initialise) what the file merely claims. Here every size field goes
through ``saescope._checks`` and is compared with the tensors the files actually hold: the safetensors headers
(``model.safetensors.index.json`` + shard headers, or every ``*.safetensors``), or the size of
``pytorch_model*.bin`` files (never unpickled here). Cost: reading a few JSON headers.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .._checks import MAX_DIM, check_alloc, checked_int, format_bytes
from ..errors import ModelLoadError

MAX_LAYERS = 4096
MAX_CONFIG_BYTES = 4 * 2**20
MAX_HEADER_BYTES = 100 * 2**20
MIN_BYTES_PER_PARAM = 0.5     # 4-bit quantised weights are the densest storage accepted
# one size fact of a model, and the config.json fields that may state it
FIELDS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "d_mlp": ("intermediate_size", "n_inner", "ffn_dim"),
    "d_vocab": ("vocab_size",),
    "n_heads": ("num_attention_heads", "n_head"),
    "n_kv_heads": ("num_key_value_heads",),
    "d_head": ("head_dim",),
    "n_ctx": ("max_position_embeddings", "n_positions", "n_ctx"),
}
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}
_LAYER_INDEX = re.compile(r"\.(\d+)\.")
_POS_EMBED = re.compile(r"(^|\.)(wpe|position_embeddings|embed_positions)\.weight$")


@dataclass
class OnDisk:
    """What the weight files hold: element count, bytes, largest dimension, layer indices (None: unknown)."""

    files: list[str] = field(default_factory=list)
    elements: int | None = 0
    n_bytes: int = 0
    max_dim: int | None = 0
    n_layers: int | None = None
    pos_rows: int | None = None      # rows of a learned position embedding (wpe), when there is one


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelLoadError(f"{path} is {path.stat().st_size} bytes; a model config is a few kilobytes")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    text = raw.get("text_config")
    return {**raw, **text} if isinstance(text, dict) else raw


def config_sizes(folder: Path) -> dict[str, tuple[str, int]]:
    """``{fact: (config.json field, value)}`` for every size field present, each range-checked."""
    raw, out = _read_config(folder), {}
    for fact, names in FIELDS.items():
        for name in names:
            if raw.get(name) is None:
                continue
            hi = MAX_LAYERS if fact == "layers" else MAX_DIM
            out[fact] = (name, checked_int(raw[name], f"config.json: {name}", lo=1, hi=hi, error=ModelLoadError))
            break
    return out


def _safetensors_header(path: Path) -> dict:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= min(MAX_HEADER_BYTES, size - 8):
            raise ModelLoadError(f"{path.name} is not a safetensors file (header length {n}, file {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise ModelLoadError(f"{path.name}: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path.name}: the safetensors header is not a JSON object")
    return header


def _shards(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise ModelLoadError(f"{index} is not a valid safetensors index (no weight_map)") from None
        bad = [n for n in names if not isinstance(n, str) or "/" in n or "\\" in n or not (folder / n).is_file()]
        if bad:
            raise ModelLoadError(f"{index}: shard {bad[0]!r} is not a file in {folder}")
        return [folder / n for n in sorted(names)]
    return sorted(folder.glob("*.safetensors"))


def on_disk(folder: Path) -> OnDisk:
    """Read what the weight files hold (safetensors headers; for .bin only the file sizes)."""
    shards, disk = _shards(folder), OnDisk()
    if not shards:
        bins = sorted(folder.glob("pytorch_model*.bin"))
        return OnDisk([b.name for b in bins], None, sum(b.stat().st_size for b in bins), None, None)
    layers: set[int] = set()
    for shard in shards:
        disk.files.append(shard.name)
        for name, info in _safetensors_header(shard).items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            shape = info.get("shape")
            if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
                raise ModelLoadError(f"{shard.name}: tensor {name!r} has an invalid shape {shape!r}")
            n = 1
            for s in shape:
                n *= s
            disk.elements += n
            disk.n_bytes += n * _DTYPE_BYTES.get(str(info.get("dtype")), 4)
            disk.max_dim = max([disk.max_dim, *shape])
            if _POS_EMBED.search(name) and shape:
                disk.pos_rows = shape[0]
            m = _LAYER_INDEX.search(name)
            if m:
                layers.add(int(m.group(1)))
    disk.n_layers = max(layers) + 1 if layers else None
    return disk


def _min_parameters(sizes: dict[str, tuple[str, int]]) -> int:
    """A lower bound of the parameters the config implies: embeddings plus two MLP matrices per layer."""
    get = {k: v for k, (_, v) in sizes.items()}
    d = get.get("d_model", 1)
    return get.get("d_vocab", 0) * d + get.get("layers", 0) * 2 * d * get.get("d_mlp", d)


def check(folder: Path, dtype_bytes: int) -> None:
    """Refuse (one line naming config.json and the field) a config whose claims the weights on disk cannot back."""
    sizes = config_sizes(folder)
    disk = on_disk(folder)
    where = disk.files[0] if len(disk.files) == 1 else f"the {len(disk.files)} weight files"
    holds = "holds" if len(disk.files) == 1 else "hold"
    if disk.n_layers is not None and "layers" in sizes and sizes["layers"][1] > disk.n_layers:
        name, value = sizes["layers"]
        raise ModelLoadError(f"config.json: {name} = {value} but {where} {holds} weights for {disk.n_layers} "
                             "layers; the config does not match the weights")
    if disk.max_dim is not None:
        for fact in ("d_model", "d_mlp", "d_vocab", "d_head"):
            if fact in sizes and sizes[fact][1] > disk.max_dim:
                name, value = sizes[fact]
                raise ModelLoadError(f"config.json: {name} = {value} but no tensor in {where} has a dimension "
                                     f"that large (largest {disk.max_dim}); the config does not match the weights")
    if disk.pos_rows is not None and "n_ctx" in sizes and sizes["n_ctx"][1] > disk.pos_rows:
        name, value = sizes["n_ctx"]
        raise ModelLoadError(f"config.json: {name} = {value} but the position embedding in {where} has "
                             f"{disk.pos_rows} rows; the config does not match the weights")
    need = _min_parameters(sizes)
    if need * MIN_BYTES_PER_PARAM > 1.5 * disk.n_bytes + 2**20:
        fields = ", ".join(f"{n} = {v}" for n, v in sizes.values())
        raise ModelLoadError(f"config.json claims at least {need:,} parameters ({fields}) but {where} {holds} "
                             f"{format_bytes(disk.n_bytes)}; the config does not match the weights")
    held = disk.elements if disk.elements is not None else disk.n_bytes // 2
    check_alloc(max(need, held) * dtype_bytes, f"model {folder.name} ({max(need, held):,} parameters)",
                error=ModelLoadError)
