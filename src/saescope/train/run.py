"""One training run's state and its stages, called in order by ``trainer.train_sae``.

``Run(cfg, source, out_dir, resume)`` sets up the devices, ranks, source, model and optimiser, then either restores
a checkpoint or initialises from a first sample of activations (input scale, ``b_dec``, the sparsity-aware start).
Each step is ``batch`` -> ``update`` -> ``statistics`` -> ``report``; ``finish`` exports the SAE.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

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
from .sparsity import RunWatch, SparsityController, init_for_target
from .variants import make_model, pair_mode

log = logging.getLogger(__name__)


@dataclass
class RunState:
    step: int = 0
    scale: float = 1.0
    nonfinite: int = 0
    density_tokens: int = 0
    scale_out: float = 1.0      # transcoders: the target's normalisation factor


class Run:
    def __init__(self, cfg: TrainConfig, source, out: Path | None, resuming: bool, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.rank, self.world = ddp.rank(), ddp.world_size()
        self.main = self.rank == 0
        self.out = out
        if pair_mode(source, cfg):  # a transcoder: rows are [x | y] pairs (``transcoder.py``)
            from .transcoder import pair_source

            self.src = pair_source(source, cfg, cfg.batch_size)
        else:
            self.src = resolve_source(source, cfg, cfg.batch_size)
        self.split = getattr(self.src, "pair_split", None)
        self.d_in = self.split[0] if self.split else self.src.d_in
        self.total = max(1, cfg.resolved_total_tokens(self.src.n) // cfg.batch_size)  # unset: one pass
        self.model = make_model(cfg, self.d_in, self.split, torch.Generator().manual_seed(cfg.seed), self.device)
        self.params = list(self.model.parameters())
        self.opt = adam(self.model.param_groups(), cfg, self.device)  # JumpReLU: thresholds at their own lr
        self.st = RunState()
        d_sae = self.model.d_sae
        self.since_fired = torch.zeros(d_sae, dtype=torch.long, device=self.device)
        self.density_counts = torch.zeros(d_sae, dtype=torch.float64, device=self.device)
        self.control = SparsityController(cfg, self.total)
        self.finished = False
        state = ckpt.load_state(out) if resuming else None
        if state is not None:
            self._restore(state)
        else:
            if resuming:
                log.info("%s: no checkpoint yet; starting the run from the beginning", out)
            self._initialise()
        if isinstance(self.src, StreamSource) and self.st.step > 0 and not self.finished:
            self.src.start(self.st.step)

    # ------------------------------------------------------------------ start
    def _restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optim"])
            self.since_fired.copy_(state["since_fired"])
            self.density_counts.copy_(state["density_counts"])
            self.control.load_state_dict(state.get("sparsity", {}))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{self.out / ckpt.CHECKPOINT_DIR / ckpt.STATE_FILE}: does not match this "
                                  f"configuration ({type(exc).__name__}); choose another --out") from None
        self.st = RunState(step=int(state["step"]), scale=float(state["scale"]), nonfinite=int(state["nonfinite"]),
                           density_tokens=int(state["density_tokens"]), scale_out=float(state.get("scale_out", 1.0)))
        self.finished = bool(state.get("done")) and (self.out / "cfg.json").exists()
        if not self.finished:
            if not self.src.exact_resume:
                log.warning("resuming a streaming run: the activation stream restarts, so the result will differ "
                            "slightly from an uninterrupted run (use an activation cache for exact resume)")
            log.info("resuming %s at step %d/%d", self.out, self.st.step, self.total)

    def _initialise(self) -> None:
        """Input (and target) scale, b_dec and the sparsity-aware start from the first activations; rank 0's."""
        cfg, st, model, d_in = self.cfg, self.st, self.model, self.d_in
        if isinstance(self.src, StreamSource):
            self.src.start(0)
        sample = self.src.sample(min(cfg.init_sample_tokens, self.total * cfg.batch_size))
        sample = sample.to(device=self.device, dtype=torch.float32)
        sample = sample[torch.isfinite(sample).all(1)]
        if sample.shape[0] == 0:
            raise NumericsError(f"{self.src.name}: the first {cfg.init_sample_tokens} activations are all NaN/inf")
        if self.split:
            sample, target = sample[:, :d_in], sample[:, d_in:]
            if cfg.normalize_activations:
                st.scale_out = math.sqrt(target.shape[1]) / max(float(target.norm(dim=1).mean()), 1e-30)
            with torch.no_grad():
                model.b_dec.copy_((target * st.scale_out).mean(0))   # a transcoder's b_dec: the target's mean
        if cfg.normalize_activations:
            mean_norm = float(sample.norm(dim=1).mean())
            if mean_norm <= 0:
                raise InputError(f"{self.src.name}: activations are all zero")
            st.scale = math.sqrt(d_in) / mean_norm
        sample = sample * st.scale
        with torch.no_grad():
            if not self.split and cfg.b_dec_init == "geometric_median":
                model.b_dec.copy_(geometric_median(sample[:4096]).to(self.device))
            elif not self.split and cfg.b_dec_init == "mean":
                model.b_dec.copy_(sample.mean(0))
        if self.control.target is not None:
            init_for_target(model, sample, self.control.target)
        if self.world > 1:  # a sharded stream gives each rank its own sample: rank 0's initialisation is everyone's
            st.scale = float(ddp.broadcast_object(st.scale))
            st.scale_out = float(ddp.broadcast_object(st.scale_out))
            with torch.no_grad():
                model.b_dec.copy_(ddp.broadcast_object(model.b_dec.detach().cpu()).to(self.device))

    # ------------------------------------------------------------------ one step
    def batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's share of the batch: finite rows only, in normalised units; (x, a transcoder's target)."""
        step = self.st.step
        x = self.src.batch(step, self.cfg.batch_size, self.rank, self.world).to(device=self.device, dtype=torch.float32)
        finite = torch.isfinite(x).all(1)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            self.st.nonfinite += bad
            log.warning("step %d: skipped %d activation rows containing NaN/inf (%d so far)", step, bad,
                        self.st.nonfinite)
            x = x[finite]
            if x.shape[0] == 0:
                raise NumericsError(f"{self.src.name}: a whole batch (step {step}) is NaN/inf; check the activations")
        y = x[:, self.d_in:] * self.st.scale_out if self.split else None
        return (x[:, :self.d_in] if self.split else x) * self.st.scale, y

    def update(self, x: torch.Tensor, y: torch.Tensor | None):
        """The architecture's loss (TopK: AuxK over dead latents; penalties: the controlled coefficient), gradients
        averaged over ranks, decoder-norm projection, clipping, Adam, parameter constraints. Returns (loss output, lr)."""
        cfg, model, step = self.cfg, self.model, self.st.step
        dead = (self.since_fired >= cfg.dead_after_tokens) if cfg.sparse_topk else None
        lr = lr_at(cfg, step, self.total)
        for group in self.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        l1_scale = self.control.scale(step)
        out = model.loss(x, dead, l1_scale=l1_scale) if y is None else model.loss(x, dead, l1_scale, target=y)
        if not math.isfinite(out.parts["mse"]):
            raise NumericsError(f"training diverged at step {step} (loss {float(out.loss)}); lower lr")
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        ddp.average_gradients(self.params)
        renorm = cfg.resolved_renormalize_decoder
        if renorm:
            model.remove_parallel_grad()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.opt.step()
        model.project()
        if renorm:
            model.renormalize_decoder()
        return out, lr

    def statistics(self, out, x: torch.Tensor) -> None:
        """Of the global batch: firing counters, density, the L0 controller, BatchTopK's threshold, resampling."""
        cfg, step = self.cfg, self.st.step
        counts, n_tok = self._global_counts(out.fire_counts, x.shape[0])
        self.since_fired += n_tok
        self.since_fired[counts > 0] = 0
        if step >= int(self.total * 0.5):
            self.density_counts += counts.double()
            self.st.density_tokens += n_tok
        self.control.update(float(counts.sum()) / n_tok)
        if cfg.batch_level_topk:
            if step == int(self.total * max(0.5, 1.0 - cfg.lr_decay_fraction)):
                self.model.batch_threshold.fill_(-1.0)  # estimate the inference threshold on the final weights
            self._update_batchtopk_threshold(out)
        if cfg.resample_dead_every and (step + 1) % cfg.resample_dead_every == 0 and step + 1 < self.total:
            dead_now = self.since_fired >= cfg.dead_after_tokens
            rgen = torch.Generator().manual_seed(cfg.seed * 7_368_787 + step)  # same on every rank
            n_res = self.model.resample(dead_now, x, out.x_hat, self.opt, rgen) if self.world == 1 else 0
            if n_res:
                self.since_fired[dead_now] = 0
                log.info("step %d: resampled %d dead latents", step + 1, n_res)
        self.st.step = step + 1

    def _global_counts(self, counts: torch.Tensor, rows: int) -> tuple[torch.Tensor, int]:
        if self.world == 1:
            return counts, rows
        packed = torch.cat([counts, torch.tensor([float(rows)], device=self.device, dtype=counts.dtype)])
        ddp.all_reduce_sum_(packed)
        return packed[:-1], int(packed[-1].item())

    def _update_batchtopk_threshold(self, out) -> None:
        """EMA of the smallest kept activation (the global minimum over ranks)."""
        bmin = out.extra.get("batch_min", float("inf"))
        if self.world > 1:
            tb = torch.tensor([bmin], device=self.device)
            torch.distributed.all_reduce(tb, op=torch.distributed.ReduceOp.MIN)
            bmin = float(tb)
        self.model.update_batch_threshold(bmin if math.isfinite(bmin) else None, self.cfg.batchtopk_threshold_momentum)

    # ------------------------------------------------------------------ reporting and files
    def open_reports(self) -> None:
        """config.json, metrics.jsonl (truncated to the resumed step), wandb, the run watch and the progress bar."""
        cfg, out = self.cfg, self.out
        if out is not None and self.main:
            out.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(out / ckpt.CONFIG_FILE, cfg.to_json())
            ckpt.truncate_metrics(out / ckpt.METRICS_FILE, self.st.step)
        ddp.barrier()
        self.wandb = maybe_wandb(cfg) if self.main else None
        self.metrics_file = open(out / ckpt.METRICS_FILE, "a", encoding="utf-8") if (out is not None and self.main) else None
        self.watch = RunWatch(cfg, self.total, self.src.n, self.src.name, penalty=not cfg.sparse_topk,
                              target=self.control.target) if self.main else None
        self.last_metrics: dict = {}
        self.bar = progress(total=self.total, initial=self.st.step, desc=f"train {cfg.architecture}", unit="step",
                            **({} if self.main else {"disable": True}))
        self.t0, self.steps0 = time.perf_counter(), self.st.step

    def report(self, out, x: torch.Tensor, y: torch.Tensor | None, lr: float) -> dict:
        """The metrics row every ``log_every`` steps (else {}), warnings, progress bar, periodic checkpoint."""
        cfg, st = self.cfg, self.st
        row: dict = {}
        if st.step % cfg.log_every == 0 or st.step == self.total:
            row = metrics_row(cfg, self.model, x if y is None else y, out, self.since_fired, st, lr, self.world,
                              self.device, self.total)
            if self.control.target is not None:
                row["sparsity_coefficient"] = self.control.scale(st.step - 1) * (
                    cfg.l0_coefficient if cfg.architecture == "jumprelu" else cfg.l1_coefficient)
            self.last_metrics = row
            if self.metrics_file is not None:
                self.metrics_file.write(json.dumps(row) + "\n")
                self.metrics_file.flush()
            if self.wandb is not None:
                self.wandb.log(row, step=st.step)
            self.bar.set_postfix(loss=f"{row['loss']:.4g}", L0=f"{row['l0']:.1f}",
                                 EV=f"{row['explained_variance']:.3f}", dead=f"{100 * row['dead_fraction']:.1f}%",
                                 refresh=False)
        if self.watch is not None:
            # the loss is watched only at a fixed coefficient (a controller raising it raises the loss)
            loss = float(out.loss.detach()) if self.control.target is None else math.nan
            self.watch.update(st.step - 1, loss, self.control.l0_ema)
        self.bar.update(1)
        if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.step < self.total:
            self.save_checkpoint()
            ddp.barrier()
        return row

    def close_reports(self) -> None:
        self.bar.close()
        if self.metrics_file is not None:
            self.metrics_file.close()
        elapsed = time.perf_counter() - self.t0
        tok_s = (self.st.step - self.steps0) * self.cfg.batch_size / max(elapsed, 1e-9)
        log.info("trained %d steps in %.1fs (%.0f tokens/s)", self.st.step - self.steps0, elapsed, tok_s)

    def save_checkpoint(self, done: bool = False) -> None:
        if self.out is None or not self.main:
            return
        st = self.st
        ckpt.save_state(self.out, {
            "step": st.step, "scale": st.scale, "scale_out": st.scale_out, "nonfinite": st.nonfinite,
            "density_tokens": st.density_tokens, "model": self.model.state_dict(), "optim": self.opt.state_dict(),
            "since_fired": self.since_fired.cpu(), "density_counts": self.density_counts.cpu(),
            "sparsity": self.control.state_dict(), "done": done, "version": __version__,
        })

    def saved_sae(self):
        log.info("%s: run already finished; loading the saved SAE", self.out)
        SAE, _, _ = sae_class()
        ddp.barrier()
        return SAE.load(self.out)

    def finish(self):
        """The SAE in raw activation space (scales folded), saved with its density, final checkpoint and plots."""
        cfg, st, out = self.cfg, self.st, self.out
        if st.density_tokens > 0:
            density = (self.density_counts / st.density_tokens).float().cpu()
        else:
            density = torch.zeros(self.model.d_sae)
        log_density = torch.log10(density.clamp_min(1e-10))
        meta = dict(self.src.meta)
        for key in ("model", "hook", "dataset", "target_hook"):
            if getattr(cfg, key) is not None:
                meta[key] = getattr(cfg, key)
        extra = {
            "saescope_version": __version__, "architecture": cfg.architecture, "tokens": st.step * cfg.batch_size,
            "steps": st.step, "seed": cfg.seed, "batch_size": cfg.batch_size, "lr": cfg.lr, "k": cfg.k,
            "target_l0": self.control.target, "input_scale_folded": st.scale, "nonfinite_rows_skipped": st.nonfinite,
            "world_size": self.world, "model": meta.get("model"), "hook": meta.get("hook"),
            "dataset": meta.get("dataset"), "activations": meta.get("activations"),
            "final": {k: v for k, v in self.last_metrics.items() if isinstance(v, (int, float))},
        }
        if cfg.batch_level_topk:
            extra["batchtopk_threshold"] = float(self.model.batch_threshold)
        if self.split:
            extra.update(target_hook=meta.get("target_hook"), skip=cfg.skip, target_scale_folded=st.scale_out)
        sae = build_sae(self.model, cfg, st.scale, meta, extra, log_density, scale_out=st.scale_out)
        if out is not None and self.main:
            sae.save(out)
            if not (out / "sparsity.safetensors").exists():
                write_sparsity(out, log_density)
            self.save_checkpoint(done=True)
            if cfg.plots:
                try:
                    from .plots import plot_run

                    plot_run(out)
                except Exception as exc:  # plots are a convenience; never fail a finished run on them
                    log.warning("could not write plots: %s", exc)
        if self.wandb is not None:
            self.wandb.finish()
        ddp.barrier()
        return sae


def check_out_dir(out_dir: Path, cfg: TrainConfig, resume: bool) -> bool:
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
