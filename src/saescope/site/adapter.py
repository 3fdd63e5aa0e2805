"""The hook <-> SAE adapter, and the model conventions it applies (named, explicit, exact).

An activation at a hook point maps to an SAE's input by selecting or concatenating attention heads
(``attn.hook_z [..., n_heads, d_head]``) and by subtracting a model-derived shift when the SAE was trained on
TransformerLens's processed activations (``model_conventions``). ``from_sae`` puts an edited SAE-space tensor
back, so ``from_sae(to_sae(act), act) == act``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

ATTN_VALUE_BIAS = "attn_value_bias"


@dataclass(frozen=True)
class Convention:
    """A model convention the SAE was trained under: ``name`` and the shift subtracted from the raw activation
    (in the hook's own layout: ``[d]``, or ``[n_heads, d_head]`` for ``attn.hook_z``)."""
    name: str
    shift: torch.Tensor


def model_conventions(lm, sae) -> tuple[Convention, ...]:
    """Conventions to apply between ``lm``'s raw activations and ``sae``.

    ``attn_value_bias``: releases trained on TransformerLens's processed ``hook_z`` (SAE metadata
    ``extra["input_shift"] == "attn_value_bias"``) expect raw z minus each head's value bias
    (``LanguageModel.attention_value_bias``; TransformerLens folds it into ``b_O``). Centring of GPT-2
    residuals is not a model convention here: SAEs that expect it declare the ``center`` input transform."""
    extra = sae.cfg.metadata.extra or {}
    shift = extra.get("input_shift")
    if not shift:
        return ()
    if shift != ATTN_VALUE_BIAS:
        raise ConfigError(f"the SAE's metadata.extra.input_shift {shift!r} is not a convention saescope knows "
                          f"({ATTN_VALUE_BIAS})")
    layer = lm.hook_layer(sae.cfg.metadata.hook_name)
    return (Convention(ATTN_VALUE_BIAS, lm.attention_value_bias(layer).detach()),)


@dataclass(frozen=True)
class Port:
    """One side of a site: a hook, the SAE-side width, an optional head index and an optional shift.

    ``select``/``replace`` move between the hook's layout and ``[..., width]`` in raw activation space;
    ``to_sae``/``from_sae`` also subtract / add back the shift of the model conventions."""
    hook: str
    width: int
    head: int | None = None
    shift: torch.Tensor | None = None      # in the hook's layout; SAE side = activation - shift

    def select(self, act: torch.Tensor) -> torch.Tensor:
        """hook activation -> ``[..., width]`` (raw: no shift)."""
        if self.head is not None:
            if act.dim() < 2 or act.shape[-1] != self.width:
                raise ConfigError(f"activation at {self.hook} has shape {tuple(act.shape)}: no head {self.head} "
                                  f"of width {self.width}")
            return act[..., self.head, :]
        if act.shape[-1] == self.width:
            return act
        if act.dim() >= 2 and act.shape[-1] * act.shape[-2] == self.width:
            return act.flatten(-2)
        raise ConfigError(f"activation at {self.hook} has shape {tuple(act.shape)}, which does not fit width {self.width}")

    def replace(self, act: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Inverse of ``select``: an activation shaped like ``act`` holding ``value [..., width]`` where ``select``
        reads (the other heads of ``attn.hook_z`` unchanged)."""
        value = value.to(device=act.device, dtype=act.dtype)
        if self.head is not None:
            out = act.clone()
            out[..., self.head, :] = value
            return out
        return value if act.shape[-1] == self.width else value.reshape(act.shape)

    def shift_for(self, like: torch.Tensor) -> torch.Tensor | None:
        """The shift in ``select``'s layout, on ``like``'s device and dtype; None without one."""
        return None if self.shift is None else self.select(self.shift.to(device=like.device, dtype=like.dtype))

    def to_sae(self, act: torch.Tensor) -> torch.Tensor:
        """hook activation -> the SAE's side ``[..., width]`` (shift subtracted)."""
        x, shift = self.select(act), self.shift_for(act)
        return x if shift is None else x - shift

    def to_raw(self, x: torch.Tensor) -> torch.Tensor:
        """SAE side -> raw activation space ``[..., width]`` (shift added back)."""
        shift = self.shift_for(x)
        return x if shift is None else x + shift

    def from_sae(self, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """``[..., width]`` (an edited ``to_sae(act)``) -> an activation shaped like ``act``."""
        return self.replace(act, self.to_raw(x.to(device=act.device, dtype=act.dtype)))

    def delta_from_sae(self, dx: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """A change in SAE space ``[..., width]`` -> the same change in the activation's layout (shift cancels)."""
        dx = dx.to(device=act.device, dtype=act.dtype)
        if self.head is not None:
            out = torch.zeros_like(act)
            out[..., self.head, :] = dx
            return out
        return dx if act.shape[-1] == self.width else dx.reshape(act.shape)


@dataclass(frozen=True)
class Site:
    """Where an SAE sits on a model: its input ``port`` and, for a transcoder, the output port it predicts."""
    port: Port
    out: Port | None = None
    conventions: tuple[str, ...] = ()

    @property
    def hook(self) -> str:
        return self.port.hook

    @property
    def hook_out(self) -> str:
        """The hook the decoder writes to: the output hook of a transcoder, else the input hook."""
        return self.out.hook if self.out is not None else self.port.hook

    def to_sae(self, act: torch.Tensor) -> torch.Tensor:
        return self.port.to_sae(act)

    def from_sae(self, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.port.from_sae(x, act)

    @property
    def write_port(self) -> Port:
        return self.out if self.out is not None else self.port


def build_site(lm, sae) -> Site:
    """The site of ``sae`` on ``lm`` (after ``check_fits``), with the model conventions applied in the ports."""
    from .fit import sae_hook, sae_hook_out

    meta = sae.cfg.metadata
    conventions = model_conventions(lm, sae)
    shift = None
    for conv in conventions:
        shift = conv.shift if shift is None else shift + conv.shift
    port = Port(sae_hook(sae), sae.d_in, meta.hook_head_index, shift)
    hook_out = sae_hook_out(sae)
    out = Port(hook_out, sae.d_out, meta.hook_head_index_out) if hook_out else None
    return Site(port, out, tuple(c.name for c in conventions))
