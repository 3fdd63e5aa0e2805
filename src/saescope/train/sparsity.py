"""Reaching the sparsity asked for, and saying so when a run goes wrong.

* ``init_for_target(model, sample, target)``: the penalty architectures start at the target L0. For each latent
  the ``1 - target / d_sae`` quantile ``q_i`` of its pre-activation (without bias) over the first activations sets
  ``b_enc = -q`` (relu), ``b_gate = -q`` (gated) or ``theta = q`` (jumprelu), so each latent fires on about
  ``target / d_sae`` of the tokens from the first step. Without it, Adam (which moves a parameter by about ``lr``
  per step whatever the coefficient) needs far more steps than a short run has to go from half the latents active
  to a few percent, and that is why penalty SAEs did not become sparse in a small budget.
* ``SparsityController``: the penalty coefficient is ``c0 * exp(m)``; after every step
  ``m += gain * log(L0_ema / target)`` (clamped to +-12), ``L0_ema`` a running mean of the batch L0 over about five
  steps. L0 above target raises the coefficient, below lowers it. Without a target: ``m = 0`` and a linear warm-up.
* ``RunWatch``: one-line warnings when a finite source repeats, when L0 is not falling toward the target, or when
  the loss has risen for a long stretch (each said once).
"""
from __future__ import annotations

import logging
import math

import torch

from .config import TrainConfig

log = logging.getLogger(__name__)


@torch.no_grad()
def init_for_target(model, sample: torch.Tensor, target: float, chunk: int = 4096) -> None:
    """Set the encoder bias / gate bias / thresholds so that each latent fires on ``target / d_sae`` of ``sample``.

    sample [n, d_in] (normalised); uses at most 2**24 pre-activation values per chunk of latents.
    """
    d_sae = model.d_sae
    frac = min(max(target / d_sae, 1.0 / max(sample.shape[0], 1)), 1.0)
    x_in = model.x_in(sample)
    n = x_in.shape[0]
    rank = max(1, min(n, int(round((1.0 - frac) * n))))  # kthvalue rank of the (1 - frac) quantile
    q = torch.empty(d_sae, dtype=sample.dtype, device=sample.device)
    for s in range(0, d_sae, chunk):
        pre = x_in @ model.W_enc_T[s:s + chunk].t()          # [n, chunk], no bias
        q[s:s + chunk] = pre.kthvalue(rank, dim=0).values
    if model.arch == "jumprelu":
        # pre = x W + b_enc with b_enc = 0: the threshold is the quantile itself (kept > 0)
        model.threshold.copy_(q.clamp_min(1e-3))
    elif model.arch in ("relu", "gated"):
        model.b_enc.copy_(-q)                                # gated: b_enc is the gate bias b_gate


class SparsityController:
    """Multiplier on the sparsity coefficient (see module docstring); its state travels in checkpoints."""

    EMA = 0.8
    LIMIT = 12.0

    def __init__(self, cfg: TrainConfig, total_steps: int):
        self.target = cfg.resolved_target_l0 if cfg.architecture in ("relu", "gated", "jumprelu") else None
        self.gain = float(cfg.target_l0_gain)
        self.warm = max(1, int(cfg.l1_warmup_fraction * total_steps))
        self.log_mult = 0.0
        self.l0_ema: float | None = None

    def scale(self, step: int) -> float:
        """What the configured coefficient is multiplied by at ``step``."""
        if self.target is None:
            return min(1.0, (step + 1) / self.warm)
        return math.exp(self.log_mult)

    def update(self, l0: float) -> None:
        """After a step with batch L0 ``l0`` (the global batch's, identical on every rank)."""
        self.l0_ema = l0 if self.l0_ema is None else self.EMA * self.l0_ema + (1 - self.EMA) * l0
        if self.target is None:
            return
        ratio = max(self.l0_ema, 1e-3) / self.target
        self.log_mult = min(self.LIMIT, max(-self.LIMIT, self.log_mult + self.gain * math.log(ratio)))

    def state_dict(self) -> dict:
        return {"log_mult": self.log_mult, "l0_ema": self.l0_ema}

    def load_state_dict(self, d: dict) -> None:
        self.log_mult = float(d.get("log_mult", 0.0))
        self.l0_ema = d.get("l0_ema")


class RunWatch:
    """Warns (once each, one line) about repeated data, L0 not falling, and a loss that keeps rising."""

    def __init__(self, cfg: TrainConfig, total_steps: int, source_tokens: int | None, source_name: str,
                 penalty: bool, target: float | None):
        self.total = total_steps
        self.penalty = penalty
        self.target = target
        self.said: set[str] = set()
        self.loss_ema: float | None = None
        self.loss_min = math.inf
        self.rising = 0
        self.stretch = max(50, total_steps // 5)     # steps of a rising loss before it is reported
        self.l0_start: float | None = None
        self.l0_peak = 0.0
        tokens = total_steps * cfg.batch_size
        if source_tokens and tokens > source_tokens:
            self._warn("repeat", "%s: training on %s tokens makes %.1f passes over its %s activations (the data "
                       "repeats; set total_tokens to at most %s, or harvest more)", source_name, f"{tokens:,}",
                       tokens / source_tokens, f"{source_tokens:,}", f"{source_tokens:,}")

    def _warn(self, key: str, msg: str, *args) -> None:
        if key not in self.said:
            self.said.add(key)
            log.warning(msg, *args)

    def update(self, step: int, loss: float, l0: float) -> None:
        """After step ``step`` (0-based) with the batch loss and L0."""
        if self.l0_start is None:
            self.l0_start = l0
        self.l0_peak = max(self.l0_peak, l0)
        if math.isfinite(loss):
            self.loss_ema = loss if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * loss
            if self.loss_ema < self.loss_min:
                self.loss_min, self.rising = self.loss_ema, 0
            elif self.loss_ema > 1.05 * self.loss_min:
                self.rising += 1
                if self.rising >= self.stretch:
                    self._warn("loss", "step %d: the training loss has risen for %d steps (%.4g, lowest %.4g); "
                               "lower lr or the sparsity coefficient", step + 1, self.rising, self.loss_ema, self.loss_min)
        if not self.penalty or step + 1 < 20:
            return
        if self.target is not None and step + 1 == max(1, int(0.5 * self.total)):
            # with a target, half-way: far above it and not coming down from its peak (the controller may first
            # overshoot: a default JumpReLU run peaks near 2.5x its target at 30% and lands on it)
            if l0 > 1.5 * self.target and l0 > 0.8 * self.l0_peak:
                self._warn("l0", "step %d: L0 %.1f is not falling to its target %.4g (half of the run done); raise "
                           "target_l0_gain or the starting coefficient", step + 1, l0, self.target)
        elif self.target is None and step + 1 == max(1, int(0.3 * self.total)) and l0 >= 0.95 * self.l0_start:
            self._warn("l0", "step %d: L0 %.1f has not fallen from %.1f (30%% of the run done); raise the sparsity "
                       "coefficient or set target_l0", step + 1, l0, self.l0_start)
