"""Matryoshka BatchTopK training (Bussmann et al. 2025), and the sparse step it shares with transcoders.

A Matryoshka SAE is trained so that every prefix of its latents ``[0, w_i)`` (``w_1 < ... < w_n = d_sae``) is
a dictionary on its own. The latents are chosen once per batch by BatchTopK (``k * B`` largest pre-activations
of the batch); then each prefix reconstructs the target from its own latents only:

    f       = relu(BatchTopK(x_in @ W_enc + b_enc))                    [B, d_sae]
    y_hat_i = f[:, :w_i] @ W_dec[:w_i] + b_dec (+ x @ W_skip^T)        [B, d_out]
    L       = sum_i ||y - y_hat_i||^2  (+ aux * AuxK on the full residual)

(SAELens's ``matryoshka_batchtopk`` sums the level losses the same way.) Early latents take part in every
level's loss, so general, frequent features settle there, and later ones refine them without absorbing them.
At inference it is a BatchTopK SAE: a JumpReLU with the threshold learned in training, saved as SAELens saves
one (``jumprelu`` with ``training_architecture: matryoshka_batchtopk`` and the widths).

The loss is ``losses.sparse_step`` (the TopK / BatchTopK sparse path for a given target, widths and skip term),
the one the plain SAE and the transcoders use too.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .losses import StepOutput, TrainableSAE, sparse_step

DEFAULT_FRACTIONS = (1 / 16, 1 / 4, 1)


def check_train_options(cfg) -> None:
    """Matryoshka and transcoder options of a ``TrainConfig`` (called from its ``__post_init__``)."""
    from .config import TRANSCODER_ARCHITECTURES

    widths = cfg.matryoshka_widths
    if widths is not None:
        if isinstance(widths, list):
            widths = tuple(widths)
            object.__setattr__(cfg, "matryoshka_widths", widths)
        ok = isinstance(widths, tuple) and 0 < len(widths) <= 64 and all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)
        if not ok or any(a >= b for a, b in zip(widths, widths[1:])):
            raise ConfigError(f"matryoshka_widths: need strictly increasing positive integers, got {cfg.matryoshka_widths!r}")
        if cfg.architecture != "matryoshka":
            raise ConfigError(f"matryoshka_widths: only for architecture matryoshka, not {cfg.architecture!r}")
    if not isinstance(cfg.skip, bool):
        raise ConfigError(f"skip: must be true or false, got {cfg.skip!r}")
    if cfg.target_hook is not None and not isinstance(cfg.target_hook, str):
        raise ConfigError(f"target_hook: expected a hook name, got {cfg.target_hook!r}")
    if cfg.skip and cfg.target_hook is None:
        raise ConfigError("skip: a linear skip path is for transcoders; set target_hook (CLI --target-hook) too")
    if cfg.target_hook is not None:
        if cfg.architecture not in TRANSCODER_ARCHITECTURES:
            raise ConfigError(f"architecture: transcoders train as {', '.join(TRANSCODER_ARCHITECTURES)}, "
                              f"not {cfg.architecture!r}")
        if cfg.resample_dead_every:
            raise ConfigError("resample_dead_every: not available for transcoders (AuxK revives dead latents)")


def resolved_widths(cfg, d_sae: int) -> tuple[int, ...] | None:
    """The prefix widths of a Matryoshka run ending at ``d_sae``; None for other architectures."""
    if cfg.architecture != "matryoshka":
        return None
    if cfg.matryoshka_widths is None:
        widths = sorted({max(1, int(round(d_sae * f))) for f in DEFAULT_FRACTIONS})
    else:
        widths = list(cfg.matryoshka_widths)
        if widths[-1] > d_sae:
            raise ConfigError(f"matryoshka_widths: the last width {widths[-1]} exceeds d_sae {d_sae}")
        if widths[-1] != d_sae:
            widths.append(d_sae)
    return tuple(widths)


class TrainableMatryoshka(TrainableSAE):
    """A BatchTopK SAE with nested prefix losses (module docstring). ``widths`` end at ``d_sae``."""

    def __init__(self, cfg, d_in: int, generator: torch.Generator, device=None, dtype=torch.float32):
        super().__init__(cfg, d_in, generator, device=device, dtype=dtype)
        self.widths = resolved_widths(cfg, self.d_sae)

    def loss(self, x: torch.Tensor, dead: torch.Tensor | None, l1_scale: float = 1.0) -> StepOutput:
        return sparse_step(self, self.x_in(x), x, dead, self.b_dec, self.widths)

    def export_tensors(self, scale: float) -> dict[str, torch.Tensor]:
        t = TrainableSAE.export_tensors(self, scale)
        t["threshold"] = torch.full_like(t["b_enc"], max(float(self.batch_threshold), 0.0))
        return t
