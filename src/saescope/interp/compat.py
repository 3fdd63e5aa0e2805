"""Does an SAE fit a language model? Hook, width and model checks, and the hook-site adapter.

``check_fits(lm, sae)`` is called by every function of ``saescope.interp`` before it touches a model, so a
mismatch is one clear line instead of a shape error deep inside a forward pass.
"""
from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

import torch

from ..errors import ConfigError, HookError, InputError, NumericsError

log = logging.getLogger(__name__)

# Names under which the same released model is known (hub ids, TransformerLens aliases).
_ALIASES = {
    "gpt2": "gpt2", "gpt2-small": "gpt2", "openai-community/gpt2": "gpt2",
    "gpt2-medium": "gpt2-medium", "openai-community/gpt2-medium": "gpt2-medium",
    "gpt2-large": "gpt2-large", "openai-community/gpt2-large": "gpt2-large",
    "gpt2-xl": "gpt2-xl", "openai-community/gpt2-xl": "gpt2-xl",
}


def canonical_model_name(name: str | None) -> str | None:
    """``"gpt2-small"``/``"openai-community/gpt2"`` -> ``"gpt2"``; ``"EleutherAI/pythia-70m-deduped"`` -> ``"pythia-70m-deduped"``."""
    if name is None:
        return None
    key = str(name).strip().rstrip("/").lower()
    if key in _ALIASES:
        return _ALIASES[key]
    if key.startswith("eleutherai/"):
        key = key.split("/", 1)[1]
    return key


def same_model(a: str | None, b: str | None) -> bool:
    return canonical_model_name(a) == canonical_model_name(b)


def sae_prepend_bos(lm, sae) -> bool:
    """The SAE's ``metadata.prepend_bos``; when the SAE does not say (None), the model's own default
    (``lm.info.default_prepend_bos``), never ``bool(None)``."""
    pb = sae.cfg.metadata.prepend_bos
    if pb is None:
        log.debug("the SAE does not say whether it expects a BOS token; using the model's default (%s)",
                  lm.info.default_prepend_bos)
        return bool(lm.info.default_prepend_bos)
    return bool(pb)


def sae_hook(sae) -> str:
    """The hook the SAE reads from (its metadata); a ConfigError when the SAE does not say."""
    hook = sae.cfg.metadata.hook_name
    if not hook:
        where = f" ({sae.path})" if getattr(sae, "path", None) else ""
        raise ConfigError(f"the SAE{where} has no metadata.hook_name; set it in cfg.json (e.g. blocks.6.hook_resid_pre)")
    return hook


def check_fits(lm, sae) -> None:
    """Raise a one-line error unless ``sae`` reads a hook of ``lm`` with the right width, for the same model.

    Checks, in order: the SAE names a hook; the model the SAE was trained on (``metadata.model_name``) is this
    model ("gpt2", "gpt2-small" and "openai-community/gpt2" are the same); the hook exists on this model
    (HookError listing valid names); ``d_in`` equals the hook's width (for ``attn.hook_z``:
    ``d_head`` with ``hook_head_index``, or ``n_heads * d_head``). A model mismatch with matching widths is
    still an error, since the features would be meaningless. Local models (a path) are not name-checked.
    """
    hook = sae_hook(sae)
    trained_on = sae.cfg.metadata.model_name
    if trained_on and not _is_path(lm.name) and not same_model(trained_on, lm.name):
        raise ConfigError(f"the SAE was trained on model {trained_on!r} but the model is {lm.name!r}; "
                          f"pass --model {trained_on} or an SAE made for {lm.name}")
    if hook not in lm.hook_names():
        lm.hook_width(hook)  # raises HookError listing the valid names
        raise HookError(f"hook {hook!r} (from the SAE's metadata) does not exist on model {lm.name}")
    widths = _accepted_widths(lm, hook, sae)
    if sae.d_in not in widths:
        raise ConfigError(f"SAE d_in={sae.d_in} does not match the width {widths[0]} of hook {hook} on model {lm.name}; "
                          f"use an SAE trained on this model and hook")
    apply_model_conventions(lm, sae)


def apply_model_conventions(lm, sae) -> None:
    """Releases trained on TransformerLens's processed ``hook_z`` (``metadata.extra["input_shift"] ==
    "attn_value_bias"``) expect raw z minus the per-head value bias: fold that bias into the SAE, once, so it
    takes this model's raw z exactly (see ``LanguageModel.attention_value_bias``)."""
    extra = sae.cfg.metadata.extra or {}
    if extra.get("input_shift") != "attn_value_bias":
        return
    shift = lm.attention_value_bias(lm.hook_layer(sae.cfg.metadata.hook_name)).to(sae.W_enc)  # [n_heads, d_head]
    head = sae.cfg.metadata.hook_head_index
    with torch.no_grad():
        sae.fold_input_shift(shift[head] if head is not None else shift)
    sae.cfg = sae.cfg.replace(metadata={"extra": {**extra, "input_shift": None, "input_shift_folded": "attn_value_bias"}})


def _is_path(name: str) -> bool:
    return "/" in name and (name.startswith((".", "/", "~")) or name.count("/") > 1)


def _accepted_widths(lm, hook: str, sae) -> list[int]:
    width = lm.hook_width(hook)
    if hook.endswith("hook_z") and sae.cfg.metadata.hook_head_index is None:
        return [width * lm.info.n_heads, width]
    return [width]


@dataclass(frozen=True)
class Site:
    """Maps a hook activation to the SAE's input and back.

    Usually the identity: ``[..., d_in]``. For ``attn.hook_z`` (``[..., n_heads, d_head]``) either one head
    (``hook_head_index``) or all heads flattened to ``[..., n_heads * d_head]``.
    """
    hook: str
    d_in: int
    head: int | None = None

    @classmethod
    def of(cls, sae) -> "Site":
        return cls(sae_hook(sae), sae.d_in, sae.cfg.metadata.hook_head_index)

    def to_sae(self, act: torch.Tensor) -> torch.Tensor:
        """hook activation -> ``[..., d_in]``"""
        if act.shape[-1] == self.d_in and self.head is None:
            return act
        if self.head is not None and act.dim() >= 2:
            return act[..., self.head, :]
        if act.dim() >= 2 and act.shape[-1] * act.shape[-2] == self.d_in:
            return act.flatten(-2)
        raise ConfigError(f"activation at {self.hook} has shape {tuple(act.shape)}, which does not fit SAE d_in={self.d_in}")

    def from_sae(self, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """``[..., d_in]`` (an edited ``to_sae(act)``) -> an activation shaped like ``act``."""
        if act.shape[-1] == self.d_in and self.head is None:
            return x
        if self.head is not None:
            out = act.clone()
            out[..., self.head, :] = x
            return out
        return x.reshape(act.shape)


def check_feature(sae, index, what: str = "feature") -> int:
    """An int feature index in ``[0, d_sae)``, or an InputError naming it."""
    if isinstance(index, bool):
        raise InputError(f"{what} index must be an integer, got {index!r}")
    try:
        i = operator.index(index)
    except TypeError:
        raise InputError(f"{what} index must be an integer, got {index!r}") from None
    if not 0 <= i < sae.d_sae:
        raise InputError(f"{what} index {i} is out of range: this SAE has {sae.d_sae} features (0..{sae.d_sae - 1})")
    return i


def tokens_for(lm, sae, text: str, prepend_bos: bool | None = None, reserve: int = 0, truncate: bool = True,
               what: str = "text") -> torch.Tensor:
    """Tokenize ``text`` as the SAE expects (its ``metadata.prepend_bos`` unless given) -> LongTensor ``[1, pos]``.

    Empty text is an InputError. Text longer than the context (minus ``reserve`` tokens kept free for
    generation) is truncated with a warning when ``truncate``, else an InputError.
    """
    if not isinstance(text, str) or text == "":
        raise InputError(f"{what} is empty; give at least one character")
    if prepend_bos is None:
        prepend_bos = sae_prepend_bos(lm, sae)
    ids = lm.to_tokens(text, prepend_bos=prepend_bos)
    if ids.dim() == 1:
        ids = ids[None]
    n_ctx = lm.info.n_ctx
    limit = n_ctx - reserve
    if ids.shape[1] > limit:
        if not truncate or limit < 1:
            extra = f" plus {reserve} new tokens" if reserve else ""
            raise InputError(f"{what} is {ids.shape[1]} tokens{extra}, longer than the model's context of {n_ctx}; "
                             f"shorten it" + (" or lower --max-new-tokens" if reserve else ""))
        log.warning("%s is %d tokens, longer than the context of %d: keeping the first %d", what, ids.shape[1], n_ctx, limit)
        ids = ids[:, :limit]
    if ids.shape[1] == 0:
        raise InputError(f"{what} produced no tokens")
    return ids


def check_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` unchanged, or a one-line NumericsError naming ``what`` when it holds NaN or inf."""
    if not bool(torch.isfinite(t).all()):
        kind = "NaN" if bool(torch.isnan(t).any()) else "inf"
        raise NumericsError(f"{what} produced {kind}; check the model/SAE weights and dtype")
    return t
