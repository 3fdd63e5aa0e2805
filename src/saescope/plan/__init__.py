"""Memory planner: before loading anything, does model + SAE + batch (+ KV cache, training state) fit the device,
and which batch sizes to use. Works from configs alone (the model's config.json, the SAE's cfg.json).

    from saescope.plan import plan
    report = plan("gpt2", "gpt2-small-resid-post-v5-128k:blocks.8.hook_resid_post", memory="10GB")
    print(report.describe())
    report.tasks["stats"].size          # contexts per forward pass for feature statistics

For code that has the model and SAE loaded already: ``pick_batch_size("stats", lm, sae, context_size=128)``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._checks import format_bytes
from .memory import (CUDA_CONTEXT, HEADROOM, TASKS, Budget, TaskPlan, device_budget, fitting_batch_size, parse_memory,
                     pick_batch_size, plan_task)
from .shapes import ModelShape, SAEShape, check_pair, model_shape, sae_shape

__all__ = ["plan", "PlanReport", "TaskPlan", "Budget", "ModelShape", "SAEShape", "model_shape", "sae_shape",
           "plan_task", "device_budget", "parse_memory", "pick_batch_size", "fitting_batch_size", "TASKS", "CUDA_CONTEXT", "HEADROOM"]


@dataclass
class PlanReport:
    """The shapes, the budget and one ``TaskPlan`` per task."""

    model: ModelShape
    sae: SAEShape
    budget: Budget
    dtype: str
    tasks: dict[str, TaskPlan]

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "sae": self.sae.to_dict(), "dtype": self.dtype,
                "budget": self.budget.to_dict(), "tasks": {k: v.to_dict() for k, v in self.tasks.items()}}

    def describe(self) -> str:
        m, s, b = self.model, self.sae, self.budget
        lines = [f"model {m.name}: {m.model_type}, {m.n_layers} layers, d_model {m.d_model}, vocab {m.d_vocab:,}, "
                 f"n_ctx {m.n_ctx}; {m.n_params / 1e6:,.1f}M parameters in {self.dtype}",
                 f"SAE {s.name}: {s.architecture}{f' k={s.k}' if s.k else ''}, d_in {s.d_in}, d_sae {s.d_sae:,}, "
                 f"{s.dtype}; {s.n_params / 1e6:,.1f}M parameters",
                 f"device: {format_bytes(b.total)} ({b.source}); usable {format_bytes(b.usable)}"
                 + (f" = ({format_bytes(b.total)} - {format_bytes(CUDA_CONTEXT)} CUDA context) x {HEADROOM}"
                    if b.device == "cuda" and "given" in b.source else f" = {HEADROOM} x that"), ""]
        for t in self.tasks.values():
            verdict = "fits" if t.fits else "DOES NOT FIT"
            size = f"{t.size:,} {t.unit}" + (f" of {t.context:,} tokens" if t.task != "train" else "")
            how = "asked" if t.requested else "chosen"
            limit = f"at most {t.largest:,} fit" if t.largest else "not even 1 fits"
            lines.append(f"{t.task:<6} {verdict}: {size} ({how}; {limit}); peak {format_bytes(t.total)} "
                         f"of {format_bytes(b.usable)}")
            lines.append("         " + ", ".join(f"{k} {format_bytes(v)}" for k, v in t.items.items()))
            lines.extend(f"         note: {n}" for n in t.notes)
        return "\n".join(lines)


def plan(model: str, sae: str, memory=None, device: str | None = None, dtype: str = "float32",
         sae_dtype: str | None = None, tasks=TASKS, context: int | None = None, batch_tokens: int | None = None,
         d_in: int | None = None, d_sae: int | None = None, from_activations: bool = False) -> PlanReport:
    """Plan ``tasks`` for ``model`` (hub id, directory, 'tiny') and ``sae`` (path or RELEASE:SAE_ID) on a card of
    ``memory`` ('10GB'), or on ``device`` as it is now. ``dtype``: the model's; ``sae_dtype``: default the SAE
    checkpoint's (for train: the autocast compute dtype, default float32). Reads configs only."""
    m = model_shape(model)
    s = sae_shape(sae, d_in=d_in, d_sae=d_sae, dtype=sae_dtype)
    check_pair(m, s)
    budget = device_budget(memory, device)
    plans = {t: plan_task(t, m, s, budget, dtype=dtype, train_dtype=sae_dtype or "float32", context=context,
                          batch_tokens=batch_tokens, with_model=not from_activations) for t in tasks}
    return PlanReport(m, s, budget, dtype, plans)
