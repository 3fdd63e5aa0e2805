"""The SAE training loop: ``train_sae(source, config, out_dir=None, resume=False) -> SAE``.

The source (an array, a cache, a file, or a model + hook + texts) is resolved by ``sources.resolve_source``.

Each step: drop (and count) non-finite rows, scale by the normalisation factor, compute the loss of the
architecture (``losses.TrainableSAE``), average gradients over ranks, clip, Adam with warm-up/decay, optional
decoder renormalisation, update the per-latent "tokens since last fired" counters and the density counts.
The result is an ``saescope.sae.SAE`` in raw activation space, saved (if ``out_dir``) at the directory's top
level with ``sparsity.safetensors``; checkpoints, ``metrics.jsonl`` and PNG plots sit beside it.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .._version import __version__
from ..errors import CheckpointError, ConfigError, InputError, NumericsError
from ..progress import progress
from . import checkpoint as ckpt
from . import distributed as ddp
from .config import TrainConfig
from .export import build_sae, sae_class, write_sparsity
from .losses import geometric_median
from .monitor import adam, lr_at, maybe_wandb, metrics_row
from .sources import StreamSource, resolve_source
from .variants import make_model, pair_mode
from .sparsity import RunWatch, SparsityController, init_for_target

log = logging.getLogger(__name__)


@dataclass
class _RunState:
    step: int = 0
    scale: float = 1.0
    nonfinite: int = 0
    density_tokens: int = 0
    scale_out: float = 1.0      # transcoders: the target's normalisation factor


def _check_out_dir(out_dir: Path, cfg: TrainConfig, resume: bool) -> bool:
    """Validate the output directory; True if a run there should be resumed."""
    cfg_file = out_dir / ckpt.CONFIG_FILE
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a directory; choose another --out")
    if cfg_file.exists():
        try:
            saved = TrainConfig.from_file(cfg_file)
        except ConfigError:
            raise CheckpointError(f"{cfg_file}: unreadable training config; choose another --out") from None
        if not resume:
            raise InputError(f"{out_dir}: already holds a training run; pass --resume to continue it or choose another --out")
        diff = cfg.same_run_as(saved)
        if diff:
            raise ConfigError(f"{out_dir}: holds a run with a different {diff} ({getattr(saved, diff)!r}, now "
                              f"{getattr(cfg, diff)!r}); use the same configuration to resume or choose another --out")
        return True
    if any(out_dir.iterdir()):
        raise InputError(f"{out_dir}: is not empty and holds no saescope training run; choose an empty or new --out")
    return False


# ---------------------------------------------------------------------------------------------------------
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
    rank, world = ddp.rank(), ddp.world_size()
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size: {cfg.batch_size} is not divisible by the {world} processes")
    main = rank == 0

    out = Path(out_dir) if out_dir is not None else None
    resuming = False
    if out is not None:
        resuming = _check_out_dir(out, cfg, resume)  # every rank checks (same filesystem); only rank 0 writes
        ddp.barrier()

    if pair_mode(source, cfg):  # a transcoder: rows are [x | y] pairs (``transcoder.py``)
        from .transcoder import pair_source

        src = pair_source(source, cfg, cfg.batch_size)
    else:
        src = resolve_source(source, cfg, cfg.batch_size)
    split = getattr(src, "pair_split", None)
    d_in = split[0] if split else src.d_in
    total = max(1, cfg.resolved_total_tokens(src.n) // cfg.batch_size)  # unset: one pass over a finite source
    gen = torch.Generator().manual_seed(cfg.seed)
    model = make_model(cfg, d_in, split, gen, device)
    params = [p for p in model.parameters()]
    opt = adam(model.param_groups(), cfg, device)
    st = _RunState()
    d_sae = model.d_sae
    since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    density_counts = torch.zeros(d_sae, dtype=torch.float64, device=device)
    density_start = int(total * 0.5)
    control = SparsityController(cfg, total)

    state = ckpt.load_state(out) if resuming else None
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optim"])
            since_fired.copy_(state["since_fired"])
            density_counts.copy_(state["density_counts"])
            control.load_state_dict(state.get("sparsity", {}))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{out / ckpt.CHECKPOINT_DIR / ckpt.STATE_FILE}: does not match this configuration "
                                  f"({type(exc).__name__}); choose another --out") from None
        st = _RunState(step=int(state["step"]), scale=float(state["scale"]), nonfinite=int(state["nonfinite"]),
                       density_tokens=int(state["density_tokens"]), scale_out=float(state.get("scale_out", 1.0)))
        if state.get("done") and (out / "cfg.json").exists():
            log.info("%s: run already finished; loading the saved SAE", out)
            SAE, _, _ = sae_class()
            ddp.barrier()
            return SAE.load(out)
        if not src.exact_resume:
            log.warning("resuming a streaming run: the activation stream restarts, so the result will differ "
                        "slightly from an uninterrupted run (use an activation cache for exact resume)")
        log.info("resuming %s at step %d/%d", out, st.step, total)
    else:
        if resuming:
            log.info("%s: no checkpoint yet; starting the run from the beginning", out)
        if isinstance(src, StreamSource):
            src.start(0)
        sample = src.sample(min(cfg.init_sample_tokens, total * cfg.batch_size)).to(device=device, dtype=torch.float32)
        sample = sample[torch.isfinite(sample).all(1)]
        if sample.shape[0] == 0:
            raise NumericsError(f"{src.name}: the first {cfg.init_sample_tokens} activations are all NaN/inf")
        if split:
            sample, target = sample[:, :d_in], sample[:, d_in:]
            if cfg.normalize_activations:
                st.scale_out = math.sqrt(target.shape[1]) / max(float(target.norm(dim=1).mean()), 1e-30)
            with torch.no_grad():
                model.b_dec.copy_((target * st.scale_out).mean(0))
        if cfg.normalize_activations:
            mean_norm = float(sample.norm(dim=1).mean())
            if mean_norm <= 0:
                raise InputError(f"{src.name}: activations are all zero")
            st.scale = math.sqrt(d_in) / mean_norm
        sample = sample * st.scale
        with torch.no_grad():
            if split:
                pass  # a transcoder's b_dec is the target's mean (above)
            elif cfg.b_dec_init == "geometric_median":
                model.b_dec.copy_(geometric_median(sample[:4096]).to(device))
            elif cfg.b_dec_init == "mean":
                model.b_dec.copy_(sample.mean(0))
        if control.target is not None:
            init_for_target(model, sample, control.target)
        del sample
        if world > 1:  # a sharded stream gives each rank its own sample: rank 0's initialisation is everyone's
            st.scale = float(ddp.broadcast_object(st.scale))
            st.scale_out = float(ddp.broadcast_object(st.scale_out))
            with torch.no_grad():
                model.b_dec.copy_(ddp.broadcast_object(model.b_dec.detach().cpu()).to(device))
    if isinstance(src, StreamSource) and st.step > 0:
        src.start(st.step)

    if out is not None and main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(out / ckpt.CONFIG_FILE, cfg.to_json())
        metrics_path = out / ckpt.METRICS_FILE
        ckpt.truncate_metrics(metrics_path, st.step)
    ddp.barrier()

    wandb_run = maybe_wandb(cfg) if main else None
    metrics_file = open(out / ckpt.METRICS_FILE, "a", encoding="utf-8") if (out is not None and main) else None

    def save_checkpoint(done: bool = False) -> None:
        if out is None or not main:
            return
        if not metrics_file.closed:
            metrics_file.flush()
        ckpt.save_state(out, {
            "step": st.step, "scale": st.scale, "scale_out": st.scale_out, "nonfinite": st.nonfinite, "density_tokens": st.density_tokens,
            "model": model.state_dict(), "optim": opt.state_dict(), "since_fired": since_fired.cpu(),
            "density_counts": density_counts.cpu(), "sparsity": control.state_dict(), "done": done,
            "version": __version__,
        })

    dead_limit = cfg.dead_after_tokens
    renorm = cfg.resolved_renormalize_decoder
    watch = RunWatch(cfg, total, src.n, src.name, penalty=not cfg.sparse_topk, target=control.target) if main else None
    last_metrics: dict = {}
    bar_kw = {} if main else {"disable": True}  # one bar, on rank 0
    bar = progress(total=total, initial=st.step, desc=f"train {cfg.architecture}", unit="step", **bar_kw)
    t0 = time.perf_counter()
    t_steps0 = st.step
    try:
        while st.step < total:
            step = st.step
            # 1. this rank's share of the batch: finite rows only, in normalised units
            x = src.batch(step, cfg.batch_size, rank, world).to(device=device, dtype=torch.float32)
            x = _finite_rows(x, st, step, src.name)
            y = x[:, d_in:] * st.scale_out if split else None  # a transcoder's target
            x = (x[:, :d_in] if split else x) * st.scale
            # 2. the architecture's loss (TopK: AuxK over dead latents; penalties: the controlled coefficient)
            dead = (since_fired >= dead_limit) if cfg.sparse_topk else None
            lr = lr_at(cfg, step, total)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            l1_scale = control.scale(step)
            out_step = model.loss(x, dead, l1_scale=l1_scale) if y is None else model.loss(x, dead, l1_scale, target=y)
            if not math.isfinite(out_step.parts["mse"]):
                raise NumericsError(f"training diverged at step {step} (loss {float(out_step.loss)}); lower lr")
            # 3. gradients averaged over ranks; decoder-norm projection, clip, Adam, parameter constraints
            opt.zero_grad(set_to_none=True)
            out_step.loss.backward()
            ddp.average_gradients(params)
            if renorm:
                model.remove_parallel_grad()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            model.project()
            if renorm:
                model.renormalize_decoder()
            # 4. statistics of the global batch: firing counters, density, L0 controller, BatchTopK threshold
            counts, n_tok = _global_counts(out_step.fire_counts, x.shape[0], world, device)
            since_fired += n_tok
            since_fired[counts > 0] = 0
            if step >= density_start:
                density_counts += counts.double()
                st.density_tokens += n_tok
            control.update(float(counts.sum()) / n_tok)
            if cfg.batch_level_topk:
                if step == int(total * max(0.5, 1.0 - cfg.lr_decay_fraction)):
                    model.batch_threshold.fill_(-1.0)  # estimate the inference threshold on the final weights
                _update_batchtopk_threshold(model, out_step, cfg, world, device)
            if cfg.resample_dead_every and (step + 1) % cfg.resample_dead_every == 0 and step + 1 < total:
                _resample(model, since_fired >= dead_limit, since_fired, x, out_step, opt, cfg, step, world)
            st.step = step + 1
            # 5. report: metrics row (every log_every steps), warnings, progress bar, checkpoint, callback
            row: dict = {}
            if st.step % cfg.log_every == 0 or st.step == total:
                row = metrics_row(cfg, model, x if y is None else y, out_step, since_fired, st, lr, world, device, total)
                if control.target is not None:
                    row["sparsity_coefficient"] = control.scale(step) * (
                        cfg.l0_coefficient if cfg.architecture == "jumprelu" else cfg.l1_coefficient)
                last_metrics = row
                if metrics_file is not None:
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
                if wandb_run is not None:
                    wandb_run.log(row, step=st.step)
                bar.set_postfix(loss=f"{row['loss']:.4g}", L0=f"{row['l0']:.1f}", EV=f"{row['explained_variance']:.3f}",
                                dead=f"{100 * row['dead_fraction']:.1f}%", refresh=False)
            if watch is not None:
                # the loss is watched only at a fixed coefficient (a controller raising it raises the loss)
                watch.update(step, float(out_step.loss.detach()) if control.target is None else math.nan, control.l0_ema)
            bar.update(1)
            if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.step < total:
                save_checkpoint()
                ddp.barrier()
            if callback is not None:
                callback(st.step, row)
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    elapsed = time.perf_counter() - t0
    tok_s = (st.step - t_steps0) * cfg.batch_size / max(elapsed, 1e-9)
    log.info("trained %d steps in %.1fs (%.0f tokens/s)", st.step - t_steps0, elapsed, tok_s)

    if st.density_tokens > 0:
        density = (density_counts / st.density_tokens).float().cpu()
    else:
        density = torch.zeros(d_sae)
    log_density = torch.log10(density.clamp_min(1e-10))
    meta = dict(src.meta)
    for key in ("model", "hook", "dataset", "target_hook"):
        if getattr(cfg, key) is not None:
            meta[key] = getattr(cfg, key)
    extra = {
        "saescope_version": __version__, "architecture": cfg.architecture, "tokens": st.step * cfg.batch_size,
        "steps": st.step, "seed": cfg.seed, "batch_size": cfg.batch_size, "lr": cfg.lr, "k": cfg.k,
        "target_l0": control.target,
        "input_scale_folded": st.scale, "nonfinite_rows_skipped": st.nonfinite, "world_size": world,
        "model": meta.get("model"), "hook": meta.get("hook"), "dataset": meta.get("dataset"),
        "activations": meta.get("activations"),
        "final": {k: v for k, v in last_metrics.items() if isinstance(v, (int, float))},
    }
    if cfg.batch_level_topk:
        extra["batchtopk_threshold"] = float(model.batch_threshold)
    if split:
        extra.update(target_hook=meta.get("target_hook"), skip=cfg.skip, target_scale_folded=st.scale_out)
    sae = build_sae(model, cfg, st.scale, meta, extra, log_density, scale_out=st.scale_out)
    if out is not None and main:
        sae.save(out)
        if not (out / "sparsity.safetensors").exists():
            write_sparsity(out, log_density)
        save_checkpoint(done=True)
        if cfg.plots:
            try:
                from .plots import plot_run

                plot_run(out)
            except Exception as exc:  # plots are a convenience; never fail a finished run on them
                log.warning("could not write plots: %s", exc)
    if wandb_run is not None:
        wandb_run.finish()
    ddp.barrier()
    return sae


# ---------------------------------------------------------------------------------------------------------
def _finite_rows(x: torch.Tensor, st: _RunState, step: int, name: str) -> torch.Tensor:
    """Drop (and count) rows holding NaN/inf; a whole bad batch is an error."""
    finite = torch.isfinite(x).all(1)
    if bool(finite.all()):
        return x
    bad = int((~finite).sum())
    st.nonfinite += bad
    log.warning("step %d: skipped %d activation rows containing NaN/inf (%d so far)", step, bad, st.nonfinite)
    x = x[finite]
    if x.shape[0] == 0:
        raise NumericsError(f"{name}: a whole batch (step {step}) is NaN/inf; check the activations")
    return x


def _global_counts(counts: torch.Tensor, rows: int, world: int, device) -> tuple[torch.Tensor, int]:
    """Per-latent firing counts [d_sae] and token count, summed over ranks."""
    if world == 1:
        return counts, rows
    packed = torch.cat([counts, torch.tensor([float(rows)], device=device, dtype=counts.dtype)])
    ddp.all_reduce_sum_(packed)
    return packed[:-1], int(packed[-1].item())


def _update_batchtopk_threshold(model, out_step, cfg: TrainConfig, world: int, device) -> None:
    """EMA of the smallest kept activation (the global minimum over ranks)."""
    bmin = out_step.extra.get("batch_min", float("inf"))
    if world > 1:
        tb = torch.tensor([bmin], device=device)
        torch.distributed.all_reduce(tb, op=torch.distributed.ReduceOp.MIN)
        bmin = float(tb)
    model.update_batch_threshold(bmin if math.isfinite(bmin) else None, cfg.batchtopk_threshold_momentum)


def _resample(model, dead_now, since_fired, x, out_step, opt, cfg: TrainConfig, step: int, world: int) -> None:
    rgen = torch.Generator().manual_seed(cfg.seed * 7_368_787 + step)  # same on every rank
    n_res = model.resample(dead_now, x, out_step.x_hat, opt, rgen) if world == 1 else 0
    if n_res:
        since_fired[dead_now] = 0
        log.info("step %d: resampled %d dead latents", step + 1, n_res)


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
