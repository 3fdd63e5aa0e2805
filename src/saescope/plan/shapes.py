"""Shapes of a model and an SAE, read from their configs alone: no weights are loaded or downloaded.

    model_shape("gpt2")                       config.json from a local directory, the bundled model or the hub cache
    sae_shape("gpt2-small-resid-post-v5-128k:blocks.8.hook_resid_post")   cfg.json from the registry's repo

A hub config that is not cached is downloaded on its own (a few KB) unless ``HF_HUB_OFFLINE`` is set. The
model's parameter count is exact: the architecture is built on PyTorch's ``meta`` device (no memory) from the
config and its parameters and buffers are counted.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .._checks import MAX_DIM, checked_int
from ..errors import CheckpointError, ConfigError, InputError, ModelLoadError

DTYPE_BYTES = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def dtype_bytes(dtype: str, what: str) -> int:
    """Bytes per element of a dtype name (``torch.`` prefix allowed)."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise InputError(f"{what}: unknown dtype {dtype!r} (use one of {', '.join(DTYPE_BYTES)})")
    return DTYPE_BYTES[name]


@dataclass(frozen=True)
class ModelShape:
    """What the memory plan needs of a causal LM. ``n_params`` counts parameters (tied ones once);
    ``buffer_bytes`` the persistent buffers in their own dtypes."""

    name: str
    model_type: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    n_params: int
    buffer_bytes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def hook_width(self, hook: str, head_index: int | None = None) -> int:
        """Width of the activation at a TransformerLens hook name (``attn.hook_z``: heads concatenated)."""
        m = _HOOK_RE.match(hook or "")
        if m is None:
            raise ConfigError(f"hook {hook!r}: not a blocks.L.<kind> name")
        layer, kind = int(m.group(1)), m.group(2)
        if layer >= self.n_layers:
            raise ConfigError(f"hook {hook!r}: layer {layer} out of range (model {self.name} has {self.n_layers} layers)")
        if kind == "mlp.hook_post":
            return self.d_mlp
        if kind == "attn.hook_z":
            return self.d_head if head_index is not None else self.n_heads * self.d_head
        return self.d_model

    @classmethod
    def from_lm(cls, lm) -> "ModelShape":
        """The shape of a loaded ``LanguageModel``."""
        i = lm.info
        params = {id(p): p.numel() for p in lm.hf_model.parameters()}
        buffers = sum(b.numel() * b.element_size() for b in lm.hf_model.buffers())
        kv = getattr(lm.hf_model.config, "num_key_value_heads", None) or i.n_heads
        return cls(name=str(lm.name), model_type=i.family, n_layers=i.n_layers, d_model=i.d_model, n_heads=i.n_heads,
                   n_kv_heads=int(kv), d_head=i.d_head, d_mlp=i.d_mlp, d_vocab=i.d_vocab, n_ctx=i.n_ctx,
                   n_params=sum(params.values()), buffer_bytes=buffers)


@dataclass(frozen=True)
class SAEShape:
    """What the memory plan needs of an SAE."""

    name: str
    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    dtype: str = "float32"
    hook_name: str | None = None
    hook_head_index: int | None = None

    @property
    def n_params(self) -> int:
        extra = {"jumprelu": self.d_sae, "gated": 2 * self.d_sae}.get(self.architecture, 0)  # threshold; r_mag + b_mag
        return 2 * self.d_in * self.d_sae + self.d_sae + self.d_in + extra

    def to_dict(self) -> dict:
        return {**asdict(self), "n_params": self.n_params}

    @classmethod
    def from_config(cls, cfg, name: str) -> "SAEShape":
        """From an ``SAEConfig``."""
        md = cfg.metadata
        return cls(name=name, architecture=cfg.architecture, d_in=cfg.d_in, d_sae=cfg.d_sae, k=cfg.k,
                   dtype=cfg.dtype, hook_name=md.hook_name, hook_head_index=md.hook_head_index)

    @classmethod
    def from_sae(cls, sae) -> "SAEShape":
        """The shape of a loaded ``SAE`` (its current dtype)."""
        shape = cls.from_config(sae.cfg, str(getattr(sae, "path", None) or "sae"))
        return cls(**{**asdict(shape), "dtype": str(sae.dtype).removeprefix("torch.")})


# ------------------------------------------------------------------------------------------------- models
def _model_config_file(name: str) -> Path:
    """config.json of 'tiny', a local directory or a hub id (from the cache; else only that file is downloaded)."""
    from ..assets import TINY_MODEL_NAME, tiny_model_dir

    if name == TINY_MODEL_NAME:
        return tiny_model_dir() / "config.json"
    path = Path(name).expanduser()
    if path.is_dir():
        return path / "config.json"
    if path.is_file() and path.name.endswith(".json"):
        return path
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelLoadError(f"{name}: not a model directory (pass the directory holding config.json, or a hub id)")
    from ..sae.registry import _download   # the cache first, then the hub unless offline

    try:
        found = _download(name, "config.json")
    except CheckpointError as exc:
        raise ModelLoadError(f"model {name}: {exc}") from None
    return Path(found)


def _count_parameters(config) -> tuple[int, int]:
    """(parameters, persistent buffer bytes) of the architecture, built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    params = {id(p): p.numel() for p in model.parameters()}
    persistent = {name for name, _ in model.named_buffers() if _is_persistent(model, name)}
    buffers = sum(b.numel() * b.element_size() for name, b in model.named_buffers() if name in persistent)
    return sum(params.values()), buffers


def _is_persistent(model, name: str) -> bool:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return leaf not in getattr(module, "_non_persistent_buffers_set", set())


def model_shape(name_or_path: str) -> ModelShape:
    """The shape of a causal LM from its ``config.json`` alone (parameters counted exactly, nothing loaded)."""
    from transformers import AutoConfig

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise InputError("model name is empty: give a hub id, a local directory or 'tiny'")
    file = _model_config_file(name_or_path)
    if not file.is_file():
        raise ModelLoadError(f"{file}: no config.json (not a Hugging Face model directory)")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        config = AutoConfig.for_model(**raw) if isinstance(raw, dict) and "model_type" in raw else None
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{file}: cannot read the model config ({str(exc).splitlines()[0] if str(exc) else exc!r})") from None
    if config is None:
        raise ModelLoadError(f"{file}: no model_type field (not a transformers model config)")
    return _shape_of_config(config, name_or_path, file)


def _shape_of_config(config, name: str, file: Path) -> ModelShape:
    def dim(attr_names, what, default=None):
        for attr in attr_names:
            value = getattr(config, attr, None)
            if value is not None:
                return checked_int(value, f"{file}: {attr}", lo=1, hi=MAX_DIM, error=ModelLoadError)
        if default is not None:
            return default
        raise ModelLoadError(f"{file}: no {what} field ({' / '.join(attr_names)})")

    d_model = dim(["hidden_size", "n_embd", "d_model"], "hidden size")
    n_heads = dim(["num_attention_heads", "n_head"], "number of attention heads")
    n_layers = dim(["num_hidden_layers", "n_layer"], "number of layers")
    d_head = dim(["head_dim"], "head dim", default=d_model // n_heads)
    try:
        n_params, buffers = _count_parameters(config)
    except Exception as exc:  # an architecture transformers cannot build: say so, do not guess
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{file}: cannot build model_type {config.model_type!r} to count its parameters "
                             f"({first})") from None
    return ModelShape(name=name, model_type=str(config.model_type), n_layers=n_layers, d_model=d_model,
                      n_heads=n_heads, n_kv_heads=dim(["num_key_value_heads"], "kv heads", default=n_heads),
                      d_head=d_head, d_mlp=dim(["intermediate_size", "n_inner"], "MLP width", default=4 * d_model),
                      d_vocab=dim(["vocab_size"], "vocabulary size"),
                      n_ctx=dim(["max_position_embeddings", "n_positions", "n_ctx"], "context length", default=2048),
                      n_params=n_params, buffer_bytes=buffers)


# ------------------------------------------------------------------------------------------------- SAEs
def _sae_cfg_file(spec: str) -> tuple[Path | None, str | None]:
    """(local cfg.json or checkpoint path, format or None) for a path or RELEASE:SAE_ID, fetching only a config."""
    from ..sae import registry

    path = Path(spec).expanduser()
    if path.exists():
        return path, None
    release, sep, sae_id = spec.partition(":")
    if not sep or not sae_id:
        raise InputError(f"SAE spec {spec!r}: no such file, and not of the form RELEASE:SAE_ID")
    rel = registry.get_release(release)
    entry = rel.sae(sae_id)
    if rel.local:
        return Path(entry.path), None
    p = entry.path.rstrip("/")
    if rel.format in ("saelens", "sparsify"):
        return registry._download(rel.repo_id, f"{p}/cfg.json"), rel.format
    return None, rel.format


def sae_shape(spec: str, d_in: int | None = None, d_sae: int | None = None, dtype: str | None = None) -> SAEShape:
    """An SAE's shape from its config alone: a local folder/cfg.json (SAELens/native, sparsify) or
    ``RELEASE:SAE_ID`` (the release's cfg.json, from the hub cache or downloaded alone). ``d_in``/``d_sae``/
    ``dtype`` override what the config says, and are required for formats without a config."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("SAE spec is empty: give a local path or RELEASE:SAE_ID (see `saescope list`)")
    file, fmt = _sae_cfg_file(spec)
    shape = _read_sae_cfg(file, fmt, spec) if file is not None else None
    if shape is None:
        if d_in is None or d_sae is None:
            raise CheckpointError(f"SAE {spec}: its format ({fmt or 'no cfg.json'}) has no config to read the shape "
                                  f"from; pass --d-in and --d-sae")
        shape = SAEShape(name=spec, architecture="relu", d_in=d_in, d_sae=d_sae)
    changes = {k: v for k, v in (("d_in", d_in), ("d_sae", d_sae), ("dtype", dtype)) if v is not None}
    out = SAEShape(**{**asdict(shape), **changes})
    dtype_bytes(out.dtype, f"SAE {spec}: dtype")
    return out


def _read_sae_cfg(file: Path, fmt: str | None, spec: str) -> SAEShape | None:
    from ..sae.formats import saelens, sparsify
    from ..sae.formats.common import read_json

    folder = file if file.is_dir() else file.parent
    cfg_file = file if file.is_file() and file.suffix == ".json" else folder / "cfg.json"
    if not cfg_file.is_file():
        return None
    raw = read_json(cfg_file)
    if fmt == "sparsify" or (fmt is None and (folder / sparsify.WEIGHTS).is_file() and "num_latents" in raw):
        d_in = checked_int(raw.get("d_in"), f"{cfg_file}: d_in", lo=1, hi=MAX_DIM, error=CheckpointError)
        n = raw.get("num_latents") or d_in * checked_int(raw.get("expansion_factor"), f"{cfg_file}: expansion_factor",
                                                         lo=1, hi=MAX_DIM, error=CheckpointError)
        return SAEShape(name=spec, architecture="topk", d_in=d_in,
                        d_sae=checked_int(n, f"{cfg_file}: num_latents", lo=1, hi=MAX_DIM, error=CheckpointError),
                        k=raw.get("k"))
    cfg, _ = saelens.parse_config(raw, cfg_file)
    for name in ("d_in", "d_sae"):
        checked_int(getattr(cfg, name), f"{cfg_file}: {name}", lo=1, hi=MAX_DIM, error=CheckpointError)
    return SAEShape.from_config(cfg, spec)


def check_pair(model: ModelShape, sae: SAEShape) -> None:
    """The SAE reads a hook of this model with its width (one-line ConfigError otherwise)."""
    if sae.hook_name:
        width = model.hook_width(sae.hook_name, sae.hook_head_index)
        if width != sae.d_in:
            raise ConfigError(f"SAE d_in={sae.d_in} does not match the width {width} of {sae.hook_name} on model "
                              f"{model.name}")
