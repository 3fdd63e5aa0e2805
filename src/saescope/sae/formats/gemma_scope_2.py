"""Gemma Scope 2 (``google/gemma-scope-2-*``, Gemma 3): ``<kind>/layer_L_width_W_l0_S[_affine]/params.safetensors``
(+ an optional ``config.json``).

Tensors: ``w_enc [d_in, d_sae]``, ``w_dec [d_sae, d_out]``, ``b_enc``, ``b_dec``, ``threshold`` and, for
``*_affine`` transcoders, ``affine_skip_connection [d_in, d_out]``. JumpReLU without subtracting ``b_dec``:

    f = relu(pre) * 1[pre > threshold],  pre = x @ w_enc + b_enc
    y = f @ w_dec + b_dec (+ x @ affine_skip_connection)          W_skip = affine_skip_connection.T

Kinds and hooks (``config.json`` gives the Hugging Face module of each when present):

    resid_post    blocks.L.hook_resid_post     model.layers.L (output)
    attn_out      blocks.L.attn.hook_z         model.layers.L.self_attn.o_proj (input, heads concatenated)
    mlp_out       blocks.L.hook_mlp_out        model.layers.L.post_feedforward_layernorm (output)
    transcoder    blocks.L.mlp.hook_in ->      model.layers.L.pre_feedforward_layernorm (output) ->
                  blocks.L.hook_mlp_out        model.layers.L.post_feedforward_layernorm (output)

The transcoder input is the normalised MLP input (after the pre-MLP RMSNorm and its weight). SAELens names it
``blocks.L.hook_mlp_in``, which in TransformerLens is the residual stream *before* that norm; saescope uses
``mlp.hook_in`` for the norm's output, as the file's own ``hf_hook_point_in`` says.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError
from ..config import SAEConfig, SAEMetadata
from .common import load_safetensors, read_json
from .families import dtype_of, layer_of, no_other_keys, tensor

PARAMS = "params.safetensors"
CONFIG = "config.json"
KINDS = {"resid_post": ("blocks.{L}.hook_resid_post", None), "attn_out": ("blocks.{L}.attn.hook_z", None),
         "mlp_out": ("blocks.{L}.hook_mlp_out", None),
         "transcoder": ("blocks.{L}.mlp.hook_in", "blocks.{L}.hook_mlp_out")}


def files(path: str) -> list[tuple[str, bool]]:
    p = path.rstrip("/")
    return [(f"{p}/{CONFIG}", False), (f"{p}/{PARAMS}", True)]


def detect(path: Path) -> bool:
    return path.is_dir() and (path / PARAMS).is_file() and not (path / "cfg.json").is_file()


def kind_of(where: str) -> str:
    parts = where.replace("\\", "/").split("/")
    if any(p == "clt" or p.startswith("clt_") for p in parts):
        raise CheckpointError(f"{where}: Gemma Scope 2 cross-layer transcoders are not supported (not in the registry)")
    for part in reversed(parts):
        for kind in KINDS:
            if part.startswith(kind):
                return kind
    raise CheckpointError(f"{where}: cannot tell the Gemma Scope 2 kind (resid_post, attn_out, mlp_out, transcoder)")


def read(local: Path, info: dict):
    folder = local if local.is_dir() else local.parent
    where = str(info.get("path") or folder)
    kind = kind_of(where)
    layer = layer_of(where, r"layer_(\d+)", str(folder))
    raw = read_json(folder / CONFIG) if (folder / CONFIG).is_file() else {}
    if raw.get("architecture", "jump_relu") != "jump_relu":
        raise CheckpointError(f"{folder / CONFIG}: architecture {raw.get('architecture')!r}, expected 'jump_relu'")
    file = folder / PARAMS
    state = load_safetensors(file)
    no_other_keys(state, ("w_enc", "w_dec", "b_enc", "b_dec", "threshold", "affine_skip_connection"), file)
    w_enc, w_dec = tensor(state, "w_enc", file, 2), tensor(state, "w_dec", file, 2)
    d_in, d_sae = w_enc.shape
    d_out = w_dec.shape[1]
    transcoder = kind == "transcoder"
    skip = "affine_skip_connection" in state
    said = raw.get("affine_connection", "affine" in where.split("/")[-1]) if transcoder else False
    if skip != bool(said) or (skip and not transcoder):
        raise CheckpointError(f"{file}: affine_skip_connection {'present' if skip else 'absent'} but the "
                              f"{'config' if 'affine_connection' in raw else 'name'} says affine={bool(said)}")
    hook_in, hook_out = (h.format(L=layer) if h else None for h in KINDS[kind])
    extra = {"source_format": "gemma_scope_2", "layer": layer}
    for key in ("hf_hook_point_in", "hf_hook_point_out"):
        if isinstance(raw.get(key), str):
            extra[key] = raw[key]
    meta = {"hook_name": info.get("hook_name") or hook_in, "hook_name_out": info.get("hook_name_out") or hook_out,
            "extra": extra}
    if isinstance(raw.get("model_name"), str):
        meta["model_name"] = raw["model_name"]
    cfg = SAEConfig(architecture="jumprelu", d_in=int(d_in), d_sae=int(d_sae), apply_b_dec_to_input=False,
                    d_out=int(d_out) if transcoder else None, skip=skip, dtype=dtype_of(w_enc),
                    metadata=SAEMetadata.from_dict(meta))
    out = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": tensor(state, "b_enc", file), "b_dec": tensor(state, "b_dec", file),
           "threshold": tensor(state, "threshold", file)}
    if skip:
        out["W_skip"] = tensor(state, "affine_skip_connection", file, 2).T
    return cfg, out, None
