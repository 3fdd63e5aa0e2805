"""Input transforms applied before an SAE's encoder, with their inverses applied after its decoder.

Every transform has the affine form  ``x' = (x - shift) * mul``  and is undone by
``x = x_hat * div + shift``; ``TransformState`` holds the per-token ``shift``, ``mul``, ``div``
(``None`` means 0 or 1). Shapes: ``x [..., d_in]``, each state tensor ``[..., 1]``.

=======================  ==========================================  =====================================
name                     forward                                      inverse
=======================  ==========================================  =====================================
none                     x                                            x_hat
center                   x - mean(x)        (TransformerLens          x_hat + mean(x)
                         ``center_writing_weights`` convention)
layer_norm               (x - mu) / (std + eps), std unbiased,       x_hat * std + mu   (as OpenAI and
                         eps = 1e-5  (OpenAI sparse_autoencoder)      SAELens undo it: without eps)
constant_norm_rescale    x * sqrt(d_in) / ||x||     (SAELens)         x_hat * ||x|| / sqrt(d_in)
scale                    x * s  (fixed scalar, foldable into          x_hat / s
                         the weights: ``SAE.fold_input_scale``)
=======================  ==========================================  =====================================
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

LN_EPS = 1e-5


class TransformState(NamedTuple):
    """What ``invert`` needs to map a reconstruction back to raw activation space."""

    shift: Tensor | None = None   # [..., 1] or None (0)
    mul: Tensor | float | None = None  # [..., 1], a scalar or None (1): forward multiplier
    div: Tensor | float | None = None  # [..., 1], a scalar or None (1): inverse multiplier
    shape: tuple | None = None    # original trailing shape when the input was reshaped (hook_z: (n_heads, d_head))


def apply(name: str, x: Tensor, scale: float = 1.0) -> tuple[Tensor, TransformState]:
    """Apply the transform ``name``: ``[..., d_in] -> ([..., d_in], state)``."""
    if name == "none":
        return x, TransformState()
    if name == "center":
        mu = x.mean(dim=-1, keepdim=True)
        return x - mu, TransformState(shift=mu)
    if name == "layer_norm":
        mu = x.mean(dim=-1, keepdim=True)
        centered = x - mu
        std = centered.std(dim=-1, keepdim=True)
        return centered / (std + LN_EPS), TransformState(shift=mu, mul=1.0 / (std + LN_EPS), div=std)
    if name == "constant_norm_rescale":
        coeff = math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True)
        return x * coeff, TransformState(mul=coeff, div=1.0 / coeff)
    if name == "scale":
        return x * scale, TransformState(mul=scale, div=1.0 / scale)
    raise ValueError(f"unknown input transform {name!r}")


def invert(x_hat: Tensor, state: TransformState | None) -> Tensor:
    """Undo a transform on a reconstruction: ``[..., d_in] -> [..., d_in]``."""
    if state is None:
        return x_hat
    if state.div is not None:
        x_hat = x_hat * state.div
    if state.shift is not None:
        x_hat = x_hat + state.shift
    return x_hat


def fixed_state(name: str, scale: float = 1.0) -> TransformState | None:
    """The state of a transform that does not depend on the input (``none``/``scale``), else None."""
    if name == "none":
        return TransformState()
    if name == "scale":
        return TransformState(mul=scale, div=1.0 / scale)
    return None


def is_input_dependent(name: str) -> bool:
    return name in ("center", "layer_norm", "constant_norm_rescale")


def to_device(state: TransformState, like: Tensor) -> TransformState:
    """Move the tensors of a state to ``like``'s device and dtype."""
    def move(t):
        return t.to(like) if isinstance(t, torch.Tensor) else t

    return TransformState(move(state.shift), move(state.mul), move(state.div), state.shape)
