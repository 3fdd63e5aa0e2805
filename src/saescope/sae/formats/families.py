"""Release families: how the SAEs of one published layout are fetched from a hub repo and read.

A family is a module under ``saescope.sae.formats`` with

    files(path)        -> [(repo file, required), ...]   the files to fetch for the SAE at ``path`` in the repo
    read(local, info)  -> (SAEConfig, state dict with SAELens names, log sparsity or None)

``local`` is the local copy of ``path`` (a file or a folder); ``info`` holds what the registry knows about the
SAE (``repo_id``, ``path``, ``root``: the local repo snapshot, hook names, ``k``, ``norm_scaling_factor``, ...)
or is empty when a local path is read without a registry entry. The formulas of each family are in
docs/formats.md. Readers take sizes from the tensors, never from names or the registry.
"""
from __future__ import annotations

import importlib
import logging
import math
import re
from pathlib import Path

from ...errors import CheckpointError

log = logging.getLogger(__name__)

# format name (registry "format") -> module of this package
MODULES = {
    "saelens": "saelens_release",
    "gemma_scope": "gemma_scope_release",
    "dictionary_learning": "dictionary_learning_release",
    "attn_z": "attn_z_release",
    "gemma_scope_2": "gemma_scope_2",
    "gemma_scope_transcoder": "gemma_scope_transcoder",
    "llama_scope": "llama_scope",
    "llama_scope_r1": "llama_scope_r1",
    "qwen_scope": "qwen_scope",
    "goodfire": "goodfire",
    "deepseek_r1": "deepseek_r1",
    "plt_transcoder": "plt_transcoder",
    "clt_layer": "clt_layer",
    "temporal": "temporal",
}
NEW_FORMATS = tuple(k for k in MODULES if k not in ("saelens", "gemma_scope", "dictionary_learning", "attn_z"))


def module(fmt: str):
    name = MODULES.get(fmt)
    if name is None:
        raise CheckpointError(f"unknown release family {fmt!r} (known: {', '.join(MODULES)})")
    return importlib.import_module(f"{__package__}.{name}")


def files(fmt: str, path: str) -> list[tuple[str, bool]]:
    """The repo files to fetch for the SAE at ``path``: ``[(filename, required), ...]``."""
    return module(fmt).files(path)


def read(fmt: str, local: Path, info: dict | None = None):
    """``(SAEConfig, state, log_sparsity)`` of the SAE at ``local`` read as family ``fmt``."""
    return module(fmt).read(Path(local), dict(info or {}))


# ---- shared by the family modules ------ ------------------------------------------------------------
def layer_of(text: str, pattern: str, what: str) -> int:
    """The layer number captured by ``pattern`` in ``text``, or CheckpointError naming ``what``."""
    m = re.search(pattern, text)
    if m is None:
        raise CheckpointError(f"{what}: cannot tell the layer from {text!r}")
    return int(m.group(1))


def tensor(state: dict, name: str, source, ndim: int | None = None):
    """``state[name]`` as a floating-point tensor of ``ndim`` dimensions, or CheckpointError."""
    import torch

    t = state.get(name)
    if not isinstance(t, torch.Tensor):
        raise CheckpointError(f"{source}: missing tensor {name!r} (has: {', '.join(map(str, list(state)[:10]))})")
    if not t.is_floating_point():
        raise CheckpointError(f"{source}: tensor {name!r} is not floating point ({t.dtype})")
    if ndim is not None and t.ndim != ndim:
        raise CheckpointError(f"{source}: tensor {name!r} has shape {list(t.shape)}, expected {ndim} dimensions")
    return t


def no_other_keys(state: dict, allowed, source) -> None:
    """Refuse tensors a family does not know: ignoring one (a bias, a scale) would give a silently wrong SAE."""
    extra = sorted(str(k) for k in state if k not in set(allowed))
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor(s) {', '.join(extra[:6])}: this layout is not the "
                              f"published one, refusing to guess their role")


def dtype_of(t) -> str:
    return str(t.dtype).replace("torch.", "")


def fold_norm_scale(state: dict, s: float, source) -> dict:
    """Fold a fixed input scaling ``x -> x * s`` (undone on the output) into the weights, exactly:
    ``W_enc * s``, ``W_dec / s``, ``b_dec / s`` (thresholds and encoder biases unchanged)."""
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s) or s <= 0:
        raise CheckpointError(f"{source}: norm scaling factor must be a positive finite number, got {s!r}")
    state = dict(state)
    state["W_enc"] = state["W_enc"] * s
    state["W_dec"] = state["W_dec"] / s
    state["b_dec"] = state["b_dec"] / s
    return state


def nonnegative_threshold(t, source):
    """A JumpReLU threshold for ``relu(pre) * 1[pre > t]``; a negative entry would differ from ``pre * 1[pre > t]``."""
    if bool((t < 0).any()):
        raise CheckpointError(f"{source}: negative JumpReLU thresholds ({int((t < 0).sum())} of them) cannot be "
                              f"expressed as relu(pre) * 1[pre > threshold]")
    return t


def read_yaml(path: Path) -> dict:
    """A YAML mapping (safe loader: data only), or CheckpointError naming the file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid YAML ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    return data


def repo_root(local: Path, path: str, info: dict) -> Path:
    """The local snapshot root of the repo (for repo-level files), from ``info`` or by stripping ``path``."""
    if info.get("root"):
        return Path(info["root"])
    depth = len([p for p in str(path).split("/") if p])
    root = Path(local)
    for _ in range(depth):
        root = root.parent
    return root
