"""The SAE training loop: ``train_sae(source, config, out_dir=None, resume=False) -> SAE``.

The source (an array, a cache, a file, or a model + hook + texts) is resolved by ``sources.resolve_source``.

Each step: drop (and count) non-finite rows, scale by the normalisation factor, compute the loss of the
architecture (``losses.TrainableSAE``), average gradients over ranks, clip, Adam with warm-up/decay, optional
decoder renormalisation, update the per-latent "tokens since last fired" counters and the density counts.
The result is an ``saescope.sae.SAE`` in raw activation space, saved (if ``out_dir``) at the directory's top
level with ``sparsity.safetensors``; checkpoints, ``metrics.jsonl`` and PNG plots sit beside it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError, InputError
from . import distributed as ddp
from .config import TrainConfig
from .run import Run, check_out_dir

log = logging.getLogger(__name__)


def train_sae(source, config: TrainConfig | None = None, out_dir=None, resume: bool = False, *,
              callback: Callable[[int, dict], None] | None = None, **overrides):
    """Train an SAE: activations ``[N, d_in]`` (or a model + hook + dataset) -> ``saescope.sae.SAE``.

    ``config`` defaults to ``TrainConfig()``; keyword ``overrides`` replace its fields. ``out_dir`` (optional)
    receives checkpoints, ``metrics.jsonl``, plots and the final SAE; ``resume=True`` continues the run found
    there (refusing a different configuration). ``callback(step, metrics)`` is called after every step
    (metrics is empty except on logging steps). Under ``torchrun`` every rank calls this; rank 0 writes files.
    """
    cfg = config or TrainConfig()
    if overrides:
        cfg = cfg.replace(**overrides)
    device = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ddp.init_if_needed(device)
    if cfg.batch_size % ddp.world_size():
        raise ConfigError(f"batch_size: {cfg.batch_size} is not divisible by the {ddp.world_size()} processes")
    out = Path(out_dir) if out_dir is not None else None
    resuming = False
    if out is not None:
        resuming = check_out_dir(out, cfg, resume)  # every rank checks (same filesystem); only rank 0 writes
        ddp.barrier()

    # source, model, optimiser; a checkpoint restored, or the scales, b_dec and sparsity start from a first sample
    run = Run(cfg, source, out, resuming, device)
    if run.finished:
        return run.saved_sae()
    run.open_reports()
    try:
        while run.st.step < run.total:
            x, y = run.batch()               # 1. this rank's share of the batch, normalised
            out_step, lr = run.update(x, y)  # 2. loss, gradients averaged over ranks, Adam, constraints
            run.statistics(out_step, x)      # 3. firing counters, density, L0 controller, thresholds
            row = run.report(out_step, x, y, lr)  # 4. metrics row, warnings, progress, checkpoint
            if callback is not None:
                callback(run.st.step, row)
    finally:
        run.close_reports()
    return run.finish()                      # 5. the SAE in raw activation space, saved with its plots


def train_from_config(cfg: TrainConfig, activations=None, out_dir=None, resume: bool = False):
    """``saescope train``: train from an activations file/cache, or from ``cfg.model`` + ``cfg.hook`` + ``cfg.dataset``."""
    if activations is not None:
        return train_sae(activations, cfg, out_dir=out_dir, resume=resume)
    missing = [name for name in ("model", "hook", "dataset") if getattr(cfg, name) is None]
    if missing:
        raise InputError(f"--{missing[0]} is required (or pass --activations PATH)")
    from ..lm import LanguageModel

    lm = LanguageModel.from_pretrained(cfg.model, device=cfg.device)
    lm.hook_width(cfg.hook)  # unknown hook -> HookError listing the valid names
    if cfg.target_hook is not None:
        lm.hook_width(cfg.target_hook)
    return train_sae((lm, cfg.hook, cfg.dataset), cfg, out_dir=out_dir, resume=resume)


def harvest_activations(model: str, hook: str, dataset: str, tokens: int, out, device=None, target_hook=None,
                        **kwargs):
    """``saescope harvest``: load the model and write an ActivationCache (see ``saescope.data.harvest``); with
    ``target_hook`` a pair cache for transcoders (``transcoder.harvest_pairs``)."""
    from ..data.activations import harvest
    from ..lm import LanguageModel

    lm = LanguageModel.from_pretrained(model, device=device)
    lm.hook_width(hook)
    if target_hook is not None:
        from .transcoder import harvest_pairs

        lm.hook_width(target_hook)
        return harvest_pairs(lm, hook, target_hook, dataset, tokens, out, **kwargs)
    return harvest(lm, hook, dataset, tokens, out, **kwargs)
