"""SAELens folders (v6 and pre-6 "legacy" configs), which are also saescope's native format.

    cfg.json                  the config; saescope adds its own config under the key "saescope"
    sae_weights.safetensors   W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]
                              (+ threshold for jumprelu; b_gate, b_mag, r_mag instead of b_enc for gated)
    sparsity.safetensors      optional: "sparsity" [d_sae], log10 feature densities
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from ..._io import publish
from ..._version import __version__
from ...errors import CheckpointError, ConfigError
from ..config import SAEConfig, SAEMetadata
from .common import atomic_save_safetensors, atomic_write_json, load_safetensors, make_temp_dir, read_json

log = logging.getLogger(__name__)

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SPARSITY = "sparsity.safetensors"

_FROM_SAELENS_ARCH = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated", "batchtopk": "batchtopk"}
_TO_SAELENS_ARCH = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu", "gated": "gated"}
_NORMALIZE = {"none": "none", None: "none", "layer_norm": "layer_norm", "constant_norm_rescale": "constant_norm_rescale",
              "expected_average_only_in": "none"}
_META_KEYS = ("model_name", "hook_name", "hook_head_index", "prepend_bos", "context_size", "dataset_path", "neuronpedia_id",
              "hook_name_out", "hook_head_index_out")
# SAELens's transcoder classes: (saescope architecture, skip) -> SAELens architecture
_TO_SAELENS_TRANSCODER = {("relu", False): "transcoder", ("relu", True): "skip_transcoder",
                          ("jumprelu", False): "jumprelu_transcoder", ("jumprelu", True): "jumprelu_skip_transcoder",
                          ("batchtopk", False): "jumprelu_transcoder", ("batchtopk", True): "jumprelu_skip_transcoder"}


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG).is_file() and (path / WEIGHTS).is_file()


def _is_legacy(cfg: dict) -> bool:
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if not version:
        return True
    try:
        return int(str(version).lstrip("v").split(".")[0]) < 6
    except ValueError:
        return True


def parse_config(raw: dict, source: Path) -> tuple[SAEConfig, dict]:
    """SAELens cfg.json (v6 or legacy) -> (SAEConfig, flags for the weights: ``rescale_by_decoder_norm``)."""
    if isinstance(raw.get("saescope"), dict):  # written by saescope: its own config is authoritative
        try:
            return SAEConfig.from_dict(raw["saescope"]), {}
        except ConfigError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
    legacy = _is_legacy(raw)
    cfg = dict(raw)
    meta_in = dict(cfg.get("metadata") or {})
    if legacy:
        renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index", "activation_fn_str": "activation_fn"}
        cfg = {renames.get(k, k): v for k, v in cfg.items()}
        meta_in = {k: cfg[k] for k in _META_KEYS if k in cfg}
        arch = cfg.get("architecture", "standard")
        act = cfg.get("activation_fn", "relu")
        if act == "topk":
            arch = "topk"
            cfg["k"] = (cfg.get("activation_fn_kwargs") or {}).get("k")
        elif act != "relu" and arch == "standard":
            raise CheckpointError(f"{source}: unsupported activation_fn {act!r} (saescope reads relu and topk)")
        norm = cfg.get("normalize_activations")
        if isinstance(norm, bool):
            norm = "expected_average_only_in" if norm else "none"
        cfg["normalize_activations"] = norm
        cfg.setdefault("apply_b_dec_to_input", True)
        meta_in.setdefault("prepend_bos", True)
    else:
        arch = cfg.get("architecture")
        for k in _META_KEYS:  # some v6 writers put metadata at the top level
            if k in cfg and k not in meta_in:
                meta_in[k] = cfg[k]
    if arch not in _FROM_SAELENS_ARCH:
        raise CheckpointError(f"{source}: unknown or unsupported architecture {arch!r} "
                              f"(saescope reads {', '.join(sorted(_FROM_SAELENS_ARCH))})")
    norm = cfg.get("normalize_activations", "none")
    if norm not in _NORMALIZE:
        raise CheckpointError(f"{source}: unsupported normalize_activations {norm!r}")
    if norm == "expected_average_only_in":
        log.warning("%s: normalize_activations=expected_average_only_in is treated as none at inference (as SAELens does); "
                    "fold the dataset scaling factor into the weights if it was not", source)
    meta = {k: meta_in.get(k) for k in _META_KEYS if meta_in.get(k) is not None}
    extra = {k: v for k, v in meta_in.items() if k not in _META_KEYS and k not in ("sae_lens_version", "sae_lens_training_version")}
    if extra.get("model_from_pretrained_kwargs"):
        log.info("%s: trained with model_from_pretrained_kwargs=%s", source, extra["model_from_pretrained_kwargs"])
    transform = _NORMALIZE[norm]
    if transform == "none" and (extra.get("model_from_pretrained_kwargs") or {}).get("center_writing_weights"):
        transform = "center"
    try:
        k = cfg.get("k")
        out = SAEConfig(
            architecture=_FROM_SAELENS_ARCH[arch], d_in=int(cfg["d_in"]),
            d_sae=int(cfg["d_sae"] if "d_sae" in cfg or "expansion_factor" not in cfg else cfg["d_in"] * cfg["expansion_factor"]),
            k=int(k) if k is not None and arch in ("topk", "batchtopk") else None,
            apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)), input_transform=transform,
            dtype=str(cfg.get("dtype", "float32")).replace("torch.", ""),
            metadata=SAEMetadata.from_dict({**meta, "extra": extra}))
    except KeyError as exc:
        raise CheckpointError(f"{source}: missing field {exc.args[0]!r}") from None
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return out, {"rescale_by_decoder_norm": bool(cfg.get("rescale_acts_by_decoder_norm", False))}


def fix_state(state: dict, flags: dict, source: Path) -> dict:
    """Fold what SAELens keeps apart into the plain weights (exact): the legacy ``scaling_factor`` (multiplies
    feature activations before the decoder) and ``rescale_acts_by_decoder_norm`` (TopK on pre * ||W_dec||)."""
    state = dict(state)
    for key in ("scaling_factor", "finetuning_scaling_factor"):
        s = state.pop(key, None)
        if s is not None and not torch.allclose(s, torch.ones_like(s)):
            if "W_dec" in state and s.shape == state["W_dec"].shape[:1]:
                state["W_dec"] = state["W_dec"] * s[:, None].to(state["W_dec"])
            else:
                raise CheckpointError(f"{source}: tensor {key!r} has shape {list(s.shape)}, expected [d_sae]")
    if flags.get("rescale_by_decoder_norm") and {"W_dec", "W_enc", "b_enc"} <= set(state):
        norms = state["W_dec"].norm(dim=-1)
        state["W_dec"] = state["W_dec"] / norms[:, None]
        state["W_enc"] = state["W_enc"] * norms[None, :]
        state["b_enc"] = state["b_enc"] * norms
    return state


def read(path: Path) -> tuple[SAEConfig, dict, torch.Tensor | None]:
    path = Path(path)
    cfg, flags = parse_config(read_json(path / CFG), path / CFG)
    state = fix_state(load_safetensors(path / WEIGHTS), flags, path / WEIGHTS)
    log_sparsity = None
    if (path / SPARSITY).is_file():
        sp = load_safetensors(path / SPARSITY)
        t = sp.get("sparsity", next(iter(sp.values()), None))
        if t is not None and tuple(t.shape) == (cfg.d_sae,):
            log_sparsity = t.float()
        else:
            log.warning("%s: ignored (expected a [d_sae] tensor 'sparsity')", path / SPARSITY)
    return cfg, state, log_sparsity


def native_cfg_dict(cfg: SAEConfig) -> dict:
    """The SAELens v6 cfg.json for ``cfg`` (+ saescope's own config under "saescope")."""
    m = cfg.metadata
    meta = {k: getattr(m, k) for k in _META_KEYS}
    meta.update({k: v for k, v in m.extra.items() if k not in meta})
    meta["sae_lens_version"] = "6.0.0"  # the layout version SAELens checks; saescope's own is below
    meta["saescope_version"] = __version__
    if cfg.input_transform == "center":
        kw = dict(meta.get("model_from_pretrained_kwargs") or {})
        kw["center_writing_weights"] = True
        meta["model_from_pretrained_kwargs"] = kw
    hook = m.hook_name or ""
    arch = _TO_SAELENS_ARCH[cfg.architecture]
    if cfg.is_transcoder:  # SAELens has no TopK or gated transcoder class: those are readable by saescope only
        arch = _TO_SAELENS_TRANSCODER.get((cfg.architecture, cfg.skip), f"{cfg.architecture}_transcoder")
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


def save_native(sae, path) -> None:
    """Write ``sae`` into directory ``path``: weights, sparsity, then cfg.json, each atomically.
    A fixed ``scale`` transform is folded into the written weights (exact), so SAELens reads the same SAE."""
    import copy

    from ..model import dtype_name, param_shapes

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a directory")
    if sae.cfg.input_transform == "scale":
        sae = copy.deepcopy(sae)
        sae.fold_input_scale()
    cfg = sae.cfg.replace(dtype=dtype_name(sae.dtype))
    tensors = {name: getattr(sae, name).detach() for name in param_shapes(cfg)}
    fresh = not path.exists()
    if fresh:  # a new folder appears whole or not at all
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot create the directory ({exc.strerror})") from None
        target, path = path, make_temp_dir(path)
    try:
        atomic_save_safetensors(tensors, path / WEIGHTS, metadata={"format": "pt"})
        if sae.log_sparsity is not None:
            atomic_save_safetensors({"sparsity": sae.log_sparsity.detach().float()}, path / SPARSITY)
        atomic_write_json(path / CFG, native_cfg_dict(cfg))
        if fresh:
            publish(path, target)
    except BaseException:
        if fresh:
            shutil.rmtree(path, ignore_errors=True)
        raise
