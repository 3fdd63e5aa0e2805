"""SAELens ``cfg.json`` <-> ``SAEConfig``: reading v6 and legacy (< 6) configs, inference and training ones,
SAEs and transcoders; writing the native config (SAELens v6 + saescope's own under ``"saescope"``).

Defaults applied when a field is absent are SAELens's own documented ones (legacy: ``architecture`` standard,
``apply_b_dec_to_input`` and ``prepend_bos`` true, as its ``handle_pre_6_0_config``; v6:
``apply_b_dec_to_input`` true, ``normalize_activations`` none, as its ``SAEConfig``). Nothing else is guessed:
a TopK config without ``k`` or a transcoder without ``d_out`` is refused.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..._version import __version__
from ...errors import CheckpointError, ConfigError
from ..config import SAEConfig, SAEMetadata
from .common import cfg_bool, cfg_dict, cfg_int, cfg_str

log = logging.getLogger(__name__)

# SAELens architecture -> (saescope architecture, transcoder, skip). The *_transcoder names for topk/gated/
# batchtopk are saescope's (SAELens 6.54 has no such classes; saescope writes and reads them).
FROM_SAELENS = {"standard": ("relu", False, False), "topk": ("topk", False, False), "jumprelu": ("jumprelu", False, False),
                "gated": ("gated", False, False), "batchtopk": ("batchtopk", False, False),
                "matryoshka_batchtopk": ("batchtopk", False, False),
                "transcoder": ("relu", True, False), "skip_transcoder": ("relu", True, True),
                "jumprelu_transcoder": ("jumprelu", True, False), "jumprelu_skip_transcoder": ("jumprelu", True, True),
                "topk_transcoder": ("topk", True, False), "topk_skip_transcoder": ("topk", True, True),
                "gated_transcoder": ("gated", True, False), "gated_skip_transcoder": ("gated", True, True)}
_TO_SAELENS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu", "gated": "gated"}
_TO_SAELENS_TRANSCODER = {"relu": "transcoder", "jumprelu": "jumprelu_transcoder", "batchtopk": "jumprelu_transcoder",
                          "topk": "topk_transcoder", "gated": "gated_transcoder"}
NORMALIZE = {"none": "none", "layer_norm": "layer_norm", "constant_norm_rescale": "constant_norm_rescale",
             "expected_average_only_in": "none"}
META_KEYS = ("model_name", "hook_name", "hook_head_index", "prepend_bos", "context_size", "dataset_path", "neuronpedia_id",
             "hook_name_out", "hook_head_index_out")
_DTYPES = ("float32", "float64", "float16", "bfloat16")
_BATCHTOPK_TRAINING = ("batchtopk", "matryoshka_batchtopk")


def is_legacy(cfg: dict) -> bool:
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    if not version:
        return True
    try:
        return int(str(version).lstrip("v").split(".")[0]) < 6
    except ValueError:
        return True


def _legacy(raw: dict, source) -> tuple[dict, dict, str]:
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index", "activation_fn_str": "activation_fn"}
    cfg = {renames.get(k, k): v for k, v in raw.items()}
    meta = {k: cfg[k] for k in META_KEYS if k in cfg}
    meta.setdefault("prepend_bos", True)  # SAELens's legacy default
    arch = cfg_str(cfg, "architecture", source, default="standard")
    act = cfg_str(cfg, "activation_fn", source, default="relu")
    if act == "topk":
        arch = "topk"
        cfg["k"] = cfg_dict(cfg, "activation_fn_kwargs", source).get("k")
    elif act != "relu" and arch == "standard":
        raise CheckpointError(f"{source}: unsupported activation_fn {act!r} (saescope reads relu and topk)")
    norm = cfg.get("normalize_activations")
    if isinstance(norm, bool):
        norm = "expected_average_only_in" if norm else "none"
    cfg["normalize_activations"] = norm
    cfg.setdefault("apply_b_dec_to_input", True)
    return cfg, meta, arch


def parse_config(raw: dict, source: Path) -> tuple[SAEConfig, dict]:
    """SAELens cfg.json -> (SAEConfig, flags for the weights: ``rescale_by_decoder_norm``)."""
    if "saescope" in raw:  # written by saescope: its own config is authoritative
        own = raw["saescope"]
        if not isinstance(own, dict):
            raise CheckpointError(f"{source}: saescope must be a JSON object")
        try:
            return SAEConfig.from_dict(own), {}
        except (ConfigError, TypeError) as exc:  # TypeError: a field of the wrong kind for its dataclass slot
            raise CheckpointError(f"{source}: {str(exc)[:300]}") from None
    if is_legacy(raw):
        cfg, meta_in, arch = _legacy(raw, source)
    else:
        cfg, meta_in = raw, dict(cfg_dict(raw, "metadata", source))
        arch = cfg_str(cfg, "architecture", source)
        for k in META_KEYS:  # some v6 writers put metadata at the top level
            if k in cfg and k not in meta_in:
                meta_in[k] = cfg[k]
    if arch not in FROM_SAELENS:
        raise CheckpointError(f"{source}: unknown or unsupported architecture {str(arch)[:40]!r} "
                              f"(saescope reads {', '.join(sorted(FROM_SAELENS))})")
    ours, transcoder, skip = FROM_SAELENS[arch]
    training = cfg_str(meta_in, "training_architecture", source)
    details = cfg_dict(meta_in, "training_architecture_details", source)
    if arch == "jumprelu" and training in _BATCHTOPK_TRAINING:  # an inference save of a (Matryoshka) BatchTopK SAE
        ours = "batchtopk"
    d_in = cfg_int(cfg, "d_in", source)
    if "d_sae" in cfg or "expansion_factor" not in cfg:
        d_sae = cfg_int(cfg, "d_sae", source)
    else:
        d_sae = d_in * cfg_int(cfg, "expansion_factor", source, hi=2**12)
    norm = cfg_str(cfg, "normalize_activations", source, default="none", choices=tuple(NORMALIZE))
    if norm == "expected_average_only_in":
        log.warning("%s: normalize_activations=expected_average_only_in is treated as none at inference (as SAELens "
                    "does); fold the dataset scaling factor into the weights if it was not", source)
    meta = {k: meta_in.get(k) for k in META_KEYS if meta_in.get(k) is not None}
    extra = {k: v for k, v in meta_in.items() if k not in META_KEYS and k not in ("sae_lens_version", "sae_lens_training_version")}
    pretrained_kw = cfg_dict(extra, "model_from_pretrained_kwargs", source)
    transform = NORMALIZE[norm]
    if transform == "none" and pretrained_kw.get("center_writing_weights") is True:
        transform = "center"
    k = _k(cfg, details, ours, d_sae, source)
    widths = cfg.get("matryoshka_widths", details.get("matryoshka_widths"))
    kwargs = dict(architecture=ours, d_in=d_in, d_sae=d_sae, k=k,
                  apply_b_dec_to_input=cfg_bool(cfg, "apply_b_dec_to_input", source, True),
                  input_transform=transform, dtype=_dtype(cfg, source),
                  matryoshka_widths=_widths(widths, d_sae, source) if ours == "batchtopk" and widths else None)
    if transcoder:
        if transform != "none":
            raise CheckpointError(f"{source}: a transcoder with normalize_activations={norm!r} is not supported")
        # SAELens's Transcoder never subtracts b_dec (it lives in the output space), whatever the flag says
        kwargs.update(d_out=cfg_int(cfg, "d_out", source), skip=skip, apply_b_dec_to_input=False)
    try:
        out = SAEConfig(**kwargs, metadata=SAEMetadata.from_dict({**meta, "extra": extra}))
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    rescale = cfg_bool(cfg, "rescale_acts_by_decoder_norm", source, False)
    if rescale and ours not in ("topk", "batchtopk"):
        raise CheckpointError(f"{source}: rescale_acts_by_decoder_norm is only defined for TopK-family SAEs")
    return out, {"rescale_by_decoder_norm": rescale}


def _k(cfg: dict, details: dict, arch: str, d_sae: int, source) -> int | None:
    if arch == "topk":
        return cfg_int(cfg, "k", source, hi=d_sae)
    if arch != "batchtopk":
        return None
    value = cfg.get("k", details.get("k"))  # the training target: informative only (a float in SAELens)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= d_sae:
        return value
    return None


def _dtype(cfg: dict, source) -> str:
    value = cfg.get("dtype", "float32")
    value = value.replace("torch.", "") if isinstance(value, str) else value
    if value not in _DTYPES:
        raise CheckpointError(f"{source}: unsupported dtype {str(value)[:30]!r} (expected one of {', '.join(_DTYPES)})")
    return value


def _widths(widths, d_sae: int, source) -> tuple[int, ...]:
    if not isinstance(widths, list) or not 0 < len(widths) <= 64:
        raise CheckpointError(f"{source}: matryoshka_widths must be a list of widths")
    out = [cfg_int({"w": w}, "w", f"{source}: matryoshka_widths", hi=d_sae) for w in widths]
    if out[-1] != d_sae:  # SAELens adds the full width as the last level
        out.append(d_sae)
    return tuple(out)


def native_cfg_dict(cfg: SAEConfig) -> dict:
    """The SAELens v6 cfg.json for ``cfg`` (+ saescope's own config under "saescope")."""
    m = cfg.metadata
    meta = {k: getattr(m, k) for k in META_KEYS}
    meta.update({k: v for k, v in m.extra.items() if k not in meta})
    meta["sae_lens_version"] = "6.0.0"  # the layout version SAELens checks; saescope's own is below
    meta["saescope_version"] = __version__
    if cfg.input_transform == "center":
        kw = dict(meta.get("model_from_pretrained_kwargs") or {})
        kw["center_writing_weights"] = True
        meta["model_from_pretrained_kwargs"] = kw
    if cfg.architecture == "batchtopk":  # as SAELens records a BatchTopK SAE it saved as jumprelu
        meta["training_architecture"] = "matryoshka_batchtopk" if cfg.matryoshka_widths else "batchtopk"
        details = dict(meta.get("training_architecture_details") or {})
        details.update({"k": cfg.k} if cfg.k is not None else {})
        if cfg.matryoshka_widths:
            details["matryoshka_widths"] = list(cfg.matryoshka_widths)
        meta["training_architecture_details"] = details
    hook = m.hook_name or ""
    arch = _TO_SAELENS[cfg.architecture]
    if cfg.is_transcoder:  # SAELens loads transcoder, skip_transcoder, jumprelu(_skip)_transcoder; not topk/gated
        arch = _TO_SAELENS_TRANSCODER[cfg.architecture]
        if cfg.skip:
            arch = arch.replace("transcoder", "skip_transcoder")
    out = {
        "architecture": arch, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": cfg.dtype,
        "device": "cpu", "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.input_transform if cfg.input_transform in ("layer_norm", "constant_norm_rescale") else "none",
        "reshape_activations": "hook_z" if hook.endswith("hook_z") else "none",
    }
    if cfg.architecture == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    if cfg.is_transcoder:
        out["d_out"] = cfg.d_out
    out["metadata"] = meta
    out["saescope"] = cfg.to_dict()
    return out
