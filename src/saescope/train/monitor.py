"""What a run reports: the logged metrics row (reduced over ranks), the optimiser, the LR schedule, wandb."""
from __future__ import annotations

import logging

import torch

from . import distributed as ddp
from .config import TrainConfig

log = logging.getLogger(__name__)


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up from lr/10 over lr_warmup_steps, then constant, then linear decay to 0."""
    f = 1.0
    if cfg.lr_warmup_steps > 0 and step < cfg.lr_warmup_steps:
        f = 0.1 + 0.9 * step / cfg.lr_warmup_steps
    decay_steps = int(round(cfg.lr_decay_fraction * total))
    if decay_steps > 0 and step >= total - decay_steps:
        f *= (total - step) / decay_steps
    return cfg.lr * f


def metrics_row(cfg, model, x, out_step, since_fired, st, lr, world, device, total) -> dict:
    with torch.no_grad():
        err = (x - out_step.x_hat)
        sums = torch.stack([err.pow(2).sum(), x.pow(2).sum()]).double()
        xsum = x.sum(0).double()
        n = torch.tensor([float(x.shape[0])], dtype=torch.float64, device=device)
        packed = torch.cat([sums, xsum, n, torch.tensor([float(out_step.loss), out_step.l0], dtype=torch.float64,
                                                          device=device)])
        if world > 1:
            ddp.all_reduce_sum_(packed)
        d = x.shape[1]
        sse, sq = packed[0], packed[1]
        xs = packed[2:2 + d]
        n_all = packed[2 + d]
        loss_sum, l0_sum = packed[3 + d] / world, packed[4 + d] / world
        total_var = sq - xs.pow(2).sum() / n_all
        ev = 1.0 - float(sse / total_var.clamp_min(1e-12))
    row = {"step": st.step, "tokens": st.step * cfg.batch_size, "lr": lr, "loss": float(loss_sum),
           "l0": float(l0_sum), "explained_variance": ev, "mse": float(sse / n_all),
           "dead_fraction": float((since_fired >= cfg.dead_after_tokens).float().mean())}
    for key, value in out_step.parts.items():
        if key != "mse":
            row[key] = value
    if cfg.ortho_every and (st.step % cfg.ortho_every == 0 or st.step == total):
        row["decoder_orthogonality"] = model.decoder_orthogonality(seed=cfg.seed)
    if st.nonfinite:
        row["nonfinite_rows_skipped"] = st.nonfinite
    return row


def adam(params, cfg: TrainConfig, device: torch.device):
    """Adam; the fused kernel where available (several times faster than foreach on CPU for big matrices)."""
    kw = dict(lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, **kw)


def maybe_wandb(cfg: TrainConfig):
    if not cfg.wandb_project:
        return None
    try:
        import wandb  # type: ignore
    except ImportError:
        log.warning("wandb_project is set but wandb is not installed; logging to metrics.jsonl only")
        return None
    return wandb.init(project=cfg.wandb_project, config=cfg.to_dict())
