"""Does an SAE (or transcoder) fit a language model? The one fit check, and the one hook-width rule.

``check_fits(lm, sae)`` raises a one-line error and never changes either object. It checks, in order: the SAE
names its hook; the model it was trained on (``metadata.model_name``) is this model (aliases such as
``gpt2-small`` / ``openai-community/gpt2`` are the same model; a model loaded from a local directory is not
name-checked, since any directory may hold any model); the hook exists on this model; ``d_in`` equals the hook's
width; for a transcoder, the same for its output hook and ``d_out``.
"""
from __future__ import annotations

from ..errors import ConfigError, HookError

# Names under which the same released model is known (hub ids, TransformerLens aliases).
_ALIASES = {
    "gpt2": "gpt2", "gpt2-small": "gpt2", "openai-community/gpt2": "gpt2",
    "gpt2-medium": "gpt2-medium", "openai-community/gpt2-medium": "gpt2-medium",
    "gpt2-large": "gpt2-large", "openai-community/gpt2-large": "gpt2-large",
    "gpt2-xl": "gpt2-xl", "openai-community/gpt2-xl": "gpt2-xl",
}


def canonical_model_name(name: str | None) -> str | None:
    """``"gpt2-small"``/``"openai-community/gpt2"`` -> ``"gpt2"``; ``"EleutherAI/pythia-70m"`` -> ``"pythia-70m"``."""
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


def is_local(lm) -> bool:
    """True when ``lm`` was loaded from a local directory (decided once, at load time, by the model layer)."""
    return lm.source == "local"


def sae_hook(sae) -> str:
    """The hook the SAE reads from (its metadata); a ConfigError when the SAE does not say."""
    hook = sae.cfg.metadata.hook_name
    if not hook:
        where = f" ({sae.path})" if getattr(sae, "path", None) else ""
        raise ConfigError(f"the SAE{where} has no metadata.hook_name; set it in cfg.json (e.g. blocks.6.hook_resid_pre)")
    return hook


def sae_hook_out(sae) -> str | None:
    """A transcoder's output hook (its metadata); None for an SAE; ConfigError when a transcoder does not say."""
    if not sae.cfg.is_transcoder:
        return None
    hook = sae.cfg.metadata.hook_name_out
    if not hook:
        where = f" ({sae.path})" if getattr(sae, "path", None) else ""
        raise ConfigError(f"the transcoder{where} has no metadata.hook_name_out (the hook it predicts); "
                          "set it in cfg.json (e.g. blocks.0.hook_mlp_out)")
    return hook


def sae_widths(lm, hook: str, head: int | None) -> list[int]:
    """The SAE widths that fit ``hook``: its last dimension, or for ``attn.hook_z`` without a head index both
    the concatenated heads (``n_heads * d_head``) and one head's ``d_head`` (an SAE shared by all heads)."""
    width = lm.hook_width(hook)
    if hook.endswith("attn.hook_z") and head is None:
        return [width * lm.info.n_heads, width]
    return [width]


def flat_width(lm, hook: str) -> int:
    """Width of the activation at ``hook`` with the heads of ``attn.hook_z`` concatenated (what a cache stores)."""
    width = lm.hook_width(hook)
    return width * lm.info.n_heads if hook.endswith("attn.hook_z") else width


def _check_hook(lm, hook: str, width: int, head: int | None, what: str, field: str) -> None:
    if hook not in lm.hook_names(extended=True):
        lm.hook_width(hook)  # raises HookError listing the valid names
        raise HookError(f"hook {hook!r} (from the SAE's metadata.{field}) does not exist on model {lm.name}")
    widths = sae_widths(lm, hook, head)
    if width not in widths:
        raise ConfigError(f"{what}={width} does not match the width {widths[0]} of hook {hook} on model "
                          f"{lm.name}; use one trained on this model and hook")


def check_fits(lm, sae) -> None:
    """Raise a one-line error unless ``sae`` fits ``lm`` (see the module docstring). Changes nothing."""
    hook = sae_hook(sae)
    meta = sae.cfg.metadata
    trained_on = meta.model_name
    if trained_on and not is_local(lm) and not same_model(trained_on, lm.name):
        raise ConfigError(f"the SAE was trained on model {trained_on!r} but the model is {lm.name!r}; "
                          f"pass --model {trained_on} or an SAE made for {lm.name}")
    kind = "transcoder" if sae.cfg.is_transcoder else "SAE"
    _check_hook(lm, hook, sae.d_in, meta.hook_head_index, f"{kind} d_in", "hook_name")
    hook_out = sae_hook_out(sae)
    if hook_out is not None:
        _check_hook(lm, hook_out, sae.d_out, meta.hook_head_index_out, "transcoder d_out", "hook_name_out")
        order = lm.hook_names(extended=True)
        if order.index(hook_out) <= order.index(hook):
            raise ConfigError(f"the transcoder reads {hook} but predicts {hook_out}, which comes before it in the "
                              f"forward pass of {lm.name}")
