"""EleutherAI ``sparsify`` folders: ``cfg.json`` + ``sae.safetensors``, read and written.

Tensors: ``encoder.weight [d_sae, d_in]``, ``encoder.bias [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``
(+ ``W_skip [d_in, d_in]`` with ``skip_connection``). Their math (``SparseCoder.encode``/``forward``):

    SAE (transcode false):   f = topk(relu(encoder(x - b_dec)))       y = f @ W_dec + b_dec (+ x @ W_skip.T)
    transcoder (true):       f = topk(relu(encoder(x)))               y = f @ W_dec + b_dec (+ x @ W_skip.T)

so a plain SAE is saescope's topk with ``apply_b_dec_to_input``, and a transcoder (output width = d_in) is a
saescope transcoder with ``d_out = d_in`` and ``W_skip`` in SAELens's ``[d_out, d_in]`` layout. A skip
connection on a plain SAE becomes a skip transcoder onto the same hook, with ``b_dec`` folded into the
encoder bias (``b_enc - b_dec @ W_enc``: the skip path reads the raw input). ``groupmax`` is refused.

A folder is named after its hookpoint, a module path of the HF model: ``layers.N``/``h.N`` (a block's
output) and ``layers.N.mlp``/``self_attn`` are mapped to TransformerLens hooks (a transcoder reads the
module's input and predicts its output); other names, and MLP/attention modules of models with post-norms
(Gemma 2/3, whose TransformerLens hooks sit after those norms), leave the hook unknown (logged).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ...errors import CheckpointError, ConfigError
from ..config import SAEConfig, SAEMetadata
from .common import (atomic_save_safetensors, atomic_write_json, cfg_bool, cfg_int, cfg_str, read_json,
                     safetensors_index)

log = logging.getLogger(__name__)

CFG = "cfg.json"
WEIGHTS = "sae.safetensors"
_POST_NORM_MODELS = re.compile(r"gemma-?[23]|gemma[23]", re.IGNORECASE)


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG).is_file() and (path / WEIGHTS).is_file()


def hooks_for(hookpoint: str, transcode: bool, model: str | None) -> tuple[str | None, str | None]:
    """TransformerLens ``(hook_name, hook_name_out)`` for a sparsify hookpoint (``None`` when unknown)."""
    m = re.fullmatch(r"(?:layers|h)\.(\d+)(?:\.(mlp|self_attn|attn))?", hookpoint)
    if not m:
        return None, None
    layer, module = m.group(1), m.group(2)
    if module is None:
        return ((f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_post") if transcode
                else (f"blocks.{layer}.hook_resid_post", None))
    if model and _POST_NORM_MODELS.search(model):
        return None, None
    if module == "mlp":
        out = f"blocks.{layer}.hook_mlp_out"
        return (f"blocks.{layer}.ln2.hook_normalized", out) if transcode else (out, None)
    out = f"blocks.{layer}.hook_attn_out"
    return (f"blocks.{layer}.ln1.hook_normalized", out) if transcode else (out, None)


def read(path: Path) -> tuple[SAEConfig, dict, None]:
    path = Path(path)
    source = path / CFG
    raw = read_json(source)
    cfg_str(raw, "activation", source, default="topk", choices=("topk",))  # sparsify's default; groupmax refused
    transcode = cfg_bool(raw, "transcode", source, False)
    skip = cfg_bool(raw, "skip_connection", source, False)
    d_in = cfg_int(raw, "d_in", source)
    d_sae = cfg_int(raw, "num_latents", source, lo=0, default=0)
    if d_sae == 0:  # sparsify: num_latents 0 means d_in * expansion_factor
        d_sae = cfg_int({"d_sae": d_in * cfg_int(raw, "expansion_factor", source, hi=2**12)}, "d_sae", source)
    k = cfg_int(raw, "k", source, hi=d_sae)
    state = safetensors_index(path / WEIGHTS)
    shapes = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if skip:
        shapes["W_skip"] = (d_in, d_in)
    for key, shape in shapes.items():
        if key not in state:
            raise CheckpointError(f"{path / WEIGHTS}: missing tensor {key!r}")
        if tuple(state[key].shape) != shape:
            raise CheckpointError(f"{path / WEIGHTS}: tensor {key!r} has shape {list(state[key].shape)}, expected "
                                  f"{list(shape)} from {CFG} (d_in={d_in}, num_latents={d_sae})")
    model = _model_name(path)
    hook, hook_out = hooks_for(path.name, transcode, model)
    if hook is None:
        log.info("%s: hookpoint %r has no known TransformerLens hook; the SAE's hook is unknown", path, path.name)
    out = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"], "W_dec": state["W_dec"],
           "b_dec": state["b_dec"]}
    if skip and not transcode:  # an SAE with a skip path: a skip transcoder onto its own hook (see module doc)
        out["b_enc"] = _fold_b_dec(state)
        transcode, hook_out = True, hook
    if skip:
        out["W_skip"] = state["W_skip"]
    meta = {"model_name": model, "hook_name": hook, "extra": {"source_format": "sparsify", "hookpoint": path.name}}
    if transcode:
        meta["hook_name_out"] = hook_out
    try:
        cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k, apply_b_dec_to_input=not transcode,
                        d_out=d_in if transcode else None, skip=skip, metadata=SAEMetadata.from_dict(meta))
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return cfg, out, None


def _fold_b_dec(state: dict):
    """``encoder.bias - encoder.weight @ b_dec`` (reads b_dec, a [d_in] vector, now; the rest lazily)."""
    b_dec = state["b_dec"].load().float()
    W = state["encoder.weight"]
    return state["encoder.bias"].map(lambda b: (b.float() - W.load().float() @ b_dec).to(b.dtype))


def _model_name(path: Path) -> str | None:
    run = path.parent / "config.json"
    if not run.is_file():
        return None
    value = read_json(run).get("model")
    return value if isinstance(value, str) else None


def save_sparsify(sae, path) -> None:
    """Write ``sae`` as a sparsify folder (``SparseCoder.load_from_disk`` reads it). Only what sparsify can
    express: TopK, input transform none (a fixed scale is folded), and either an SAE that subtracts ``b_dec``
    from its input, or a transcoder whose output width equals its input width."""
    import copy

    from .saelens import write_folder

    c = sae.cfg
    if c.input_transform == "scale":
        sae = copy.deepcopy(sae)
        sae.fold_input_scale()
        c = sae.cfg
    problem = None
    if c.architecture != "topk":
        problem = f"architecture {c.architecture} (sparsify has TopK only)"
    elif c.input_transform != "none":
        problem = f"input transform {c.input_transform}"
    elif c.is_transcoder and c.d_out != c.d_in:
        problem = f"d_out={c.d_out} != d_in={c.d_in}"
    elif not c.is_transcoder and not c.apply_b_dec_to_input:
        problem = "an SAE that does not subtract b_dec from its input"
    if problem:
        raise ConfigError(f"save(format='sparsify'): sparsify cannot express {problem}")
    tensors = {"encoder.weight": sae.W_enc.detach().T, "encoder.bias": sae.b_enc.detach(),
               "W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach()}
    if c.skip:
        tensors["W_skip"] = sae.W_skip.detach()
    cfg = {"activation": "topk", "expansion_factor": max(1, c.d_sae // c.d_in), "normalize_decoder": True,
           "num_latents": c.d_sae, "k": c.k, "multi_topk": False, "skip_connection": c.skip,
           "transcode": c.is_transcoder, "d_in": c.d_in}
    json.dumps(cfg)  # plain JSON types only

    def write(folder: Path) -> None:
        atomic_save_safetensors(tensors, folder / WEIGHTS)
        atomic_write_json(folder / CFG, cfg)

    write_folder(Path(path), write)
