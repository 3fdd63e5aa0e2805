"""A linearised forward for attribution graphs: attention patterns and norm scales are constants for autograd.

Inside ``LanguageModel.linearized()`` the forward values are unchanged (bit for bit), but gradients treat

* every attention pattern as a constant: the model's own attention function (sdpa, eager, ...) is called with
  ``query`` and ``key`` detached. The pattern is a function of q and k only, so this is exactly "pattern
  detached" while the values ``v`` keep their gradient. It is switched in through transformers'
  ``AttentionInterface`` under a registered name, with the same mask function as the original, and restored after.
* every LayerNorm / RMSNorm scale ``1 / sqrt(mean(c²) + eps)`` as a constant: a forward hook on each norm module
  returns ``out.detach() + (lin - lin.detach())`` with ``lin = c * scale.detach() * (w + offset) + b`` (the facts of
  ``norms.py``), i.e. the module's exact value with the gradient of the frozen-scale norm.

Hook points of kind ``*.hook_normalized`` also use the frozen scale while linearised.

A fused query/key/value projection (GPT-2's ``attn.c_attn``) returns its query and key columns detached and its value
columns with the gradient of the value projection alone (same values): query and key are constants for autograd
anyway, and a backward pass then multiplies by the value third of the weight instead of all of it.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import torch

from ..errors import HookError
from .norms import affine, norm_facts, normalize

_PREFIX = "saescope_linearized_"


def _original_attention(module, impl: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if impl != "eager" and impl in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[impl]
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise HookError(f"linearized(): cannot find the eager attention function of {type(module).__name__}")
    return fn


def _detached_qk_attention(impl: str):
    """The ``impl`` attention function, called with query and key detached (pattern constant for autograd)."""
    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if impl == "eager" and getattr(module, "reorder_and_upcast_attn", False):     # GPT-2's upcast variant
            return module._upcast_and_reordered_attn(query.detach(), key.detach(), value, attention_mask)
        return _original_attention(module, impl)(module, query.detach(), key.detach(), value, attention_mask,
                                                 *args, **kwargs)

    return attention


def _configs(hf_model) -> list:
    """The model's config and every sub-config that carries an attention implementation."""
    out, todo = [], [hf_model.config]
    while todo:
        cfg = todo.pop()
        if cfg is None or any(cfg is c for c in out):
            continue
        out.append(cfg)
        todo.extend(getattr(cfg, name, None) for name in getattr(cfg, "sub_configs", {}) or {})
    return [c for c in out if getattr(c, "_attn_implementation", None)]


@contextmanager
def _frozen_patterns(hf_model) -> Iterator[None]:
    try:
        from transformers.modeling_utils import AttentionInterface
    except ImportError:
        raise HookError("linearized() needs a transformers version with AttentionInterface (4.48 or newer)") from None
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:          # older transformers build masks inside the model code
        ALL_MASK_ATTENTION_FUNCTIONS = AttentionMaskInterface = None
    saved = []
    for cfg in _configs(hf_model):
        impl = cfg._attn_implementation
        if impl.startswith(_PREFIX):
            continue
        name = _PREFIX + impl
        AttentionInterface.register(name, _detached_qk_attention(impl))
        if AttentionMaskInterface is not None and impl in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
        saved.append((cfg, impl))
        cfg._attn_implementation = name
    try:
        yield
    finally:
        for cfg, impl in saved:
            cfg._attn_implementation = impl


def _is_norm(module: torch.nn.Module) -> bool:
    name = type(module).__name__
    return isinstance(module, torch.nn.LayerNorm) or name.endswith(("LayerNorm", "RMSNorm"))


def _frozen_scale_hook(facts):
    def hook(module, args, kwargs, output):
        x = args[0] if args else next(iter(kwargs.values()))
        c, inv = normalize(x, facts)
        lin = affine(c * inv.detach(), module, facts).to(output.dtype)
        return output.detach() + (lin - lin.detach())

    return hook


def _is_fused_qkv(name: str, module: torch.nn.Module) -> bool:
    return name.endswith("attn.c_attn") and type(module).__name__ == "Conv1D" and getattr(module, "bias", None) is not None


def _value_only_hook(module, args, output):
    x = args[0]
    d = output.shape[-1] // 3
    if output.shape[-1] != 3 * x.shape[-1]:
        return None
    lin = torch.addmm(module.bias[2 * d:], x.reshape(-1, x.shape[-1]), module.weight[:, 2 * d:]).view(*x.shape[:-1], d)
    v = output[..., 2 * d:].detach() + (lin - lin.detach()).to(output.dtype)
    return torch.cat([output[..., :2 * d].detach(), v], -1)


@contextmanager
def linearized(lm) -> Iterator[None]:
    """See the module docstring. Not reentrant with itself; restores the model on exit, also on errors."""
    if getattr(lm, "_linear", False):
        raise HookError("linearized() is already active for this model")
    handles = []
    for name, module in lm.hf_model.named_modules():
        if _is_fused_qkv(name, module):
            handles.append(module.register_forward_hook(_value_only_hook))
            continue
        if not _is_norm(module):
            continue
        w = getattr(module, "weight", None)
        facts = norm_facts(module, int(w.shape[-1]) if isinstance(w, torch.Tensor) else lm.info.d_model,
                           lm.hf_model.config)
        if facts is None:
            raise HookError(f"linearized(): the norm {name} ({type(module).__name__}) follows no known "
                            "LayerNorm/RMSNorm convention")
        handles.append(module.register_forward_hook(_frozen_scale_hook(facts), with_kwargs=True))
    lm._linear = True
    try:
        with _frozen_patterns(lm.hf_model):
            yield
    finally:
        lm._linear = False
        for h in handles:
            h.remove()
