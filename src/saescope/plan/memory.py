"""Device memory of each task, from shapes alone, and the largest batch that fits.

Every figure is an upper estimate of the peak, in bytes, as the sum of named items (so a plan can be read and
checked against a measured peak, as ``benchmarks/gpu_bench.py`` does):

    model weights        parameters x dtype bytes + persistent buffers
    SAE weights          (2 d_in d_sae + d_sae + d_in [+ threshold / gating]) x SAE dtype bytes
    model activations    one block's working set, (4 d_model + 2 d_mlp) per token, + attention weights
                         (2 x heads x T^2 per sequence, as eager attention and SDPA's math path hold them)
                         + logits: none with early exit (read, stats, train), the last position when generating,
                         all positions in fp32 with log-softmax copies for evals
    KV cache             2 x layers x kv heads x d_head per token of every sequence
    SAE activations      dense [tokens, d_sae] tensors: pre-activations, code, TopK's buffers and the finiteness
                         mask (read, statistics: 3), with the reconstruction (evals: 2.5), with the edited code
                         (steering: 3)
    training state       fp32 master weights, gradients and two Adam moments (16 bytes per SAE parameter),
                         + half copies of both matrices under autocast
    training batch       pre-activations, AuxK's masked copy and TopK's working buffers, 2.25 x [batch, d_sae] in
                         the compute dtype
    statistics state     per-feature top-k windows, reservoir, histogram (StatsConfig defaults), and the update's
                         transient context windows

The budget is what the device can give: a card's size minus ``CUDA_CONTEXT`` (context, kernels and cuBLAS
workspace live outside PyTorch's allocator), times ``HEADROOM`` for fragmentation.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

from .._checks import available_memory, checked_float, format_bytes
from ..errors import InputError
from .shapes import ModelShape, SAEShape, dtype_bytes

log = logging.getLogger(__name__)

GiB = 1 << 30
CUDA_CONTEXT = GiB // 2
HEADROOM = 0.9
TASKS = ("read", "steer", "train", "stats", "eval")
SAE_COPIES = {"read": 3.0, "steer": 3.0, "stats": 3.0, "eval": 2.5}
MAX_SEARCH = 1 << 24        # largest batch the search considers (tokens or sequences)
# The size chosen when more fits: beyond these a batch buys no throughput, only memory (train: TrainConfig's
# batch of 4,096 tokens, stats/eval: 64 and 32 contexts of 128, read/steer: 32 sequences).
DEFAULT_CAPS = {"read": 32, "steer": 32, "train": 4096, "stats": 64, "eval": 32}
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_MEM_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_memory(text, what: str = "--device-memory") -> int:
    """'10GB', '10GiB', '24G', '512MB' -> bytes. Units are binary (GB = GiB), as GPU makers count card memory."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(checked_float(text, what, lo=1 << 20, hi=1 << 50))
    m = _MEM_RE.match(str(text))
    if m is None or (not m.group(2) and not m.group(3)):
        raise InputError(f"{what}: cannot read {text!r} as a memory size (e.g. 10GB, 80GiB, 512MB)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    return int(checked_float(value, what, lo=1 << 20, hi=1 << 50))


@dataclass(frozen=True)
class Budget:
    """``total`` bytes of the device, ``usable`` bytes a plan may fill; ``source`` says where they come from."""

    total: int
    usable: int
    device: str
    source: str

    def to_dict(self) -> dict:
        return {"total": self.total, "usable": self.usable, "device": self.device, "source": self.source}


def device_budget(memory=None, device: str | None = None) -> Budget:
    """The budget of a card of ``memory`` (a size such as '10GB'; a CUDA card unless ``device='cpu'``), or,
    without ``memory``, of the device now: free CUDA memory (``cuda``/``cuda:N``) or the system's available memory."""
    if memory is not None:
        total = parse_memory(memory)
        if device == "cpu":
            return Budget(total, int(total * HEADROOM), "cpu", f"{format_bytes(total)} given")
        usable = int(max(0, total - CUDA_CONTEXT) * HEADROOM)
        return Budget(total, usable, "cuda", f"{format_bytes(total)} card given")
    import torch

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r}: CUDA is not available; pass --device-memory to plan for a card")
        free, total = torch.cuda.mem_get_info(torch.device(device or "cuda"))
        return Budget(int(total), int(free * HEADROOM), "cuda", f"free on {device or 'cuda'} now")
    avail = available_memory()
    if avail is None:
        raise InputError("cannot tell how much memory this machine has; pass --device-memory")
    return Budget(int(avail), int(avail * HEADROOM), "cpu", "available system memory now")


@dataclass
class TaskPlan:
    """The plan of one task: does it fit, at which size, and what takes the memory."""

    task: str
    fits: bool
    size: int                 # read/stats/eval: sequences per forward; steer: sequences generated at once;
    unit: str                 # train: tokens per step
    context: int              # tokens per sequence (train: 1)
    items: dict[str, int]
    budget: Budget
    largest: int = 0          # the largest size that fits (0: none)
    requested: bool = False   # size was asked for (--batch-tokens), not chosen
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return int(sum(self.items.values()))

    @property
    def tokens(self) -> int:
        return self.size * self.context

    def to_dict(self) -> dict:
        return {"task": self.task, "fits": self.fits, "size": self.size, "unit": self.unit, "context": self.context,
                "tokens": self.tokens, "largest": self.largest, "requested": self.requested, "total": self.total,
                "usable": self.budget.usable, "items": dict(self.items), "notes": list(self.notes)}


# ------------------------------------------------------------------------------------------------- formulas
def forward_bytes(m: ModelShape, n_seq: int, T: int, b: int, logits: str) -> int:
    """One no-grad forward of ``n_seq`` sequences of ``T`` tokens: a block's working set, attention weights,
    logits (``none`` | ``last`` | ``all``)."""
    N = n_seq * T
    out = N * (4 * m.d_model + 2 * m.d_mlp) * b + 2 * n_seq * m.n_heads * T * T * b
    if logits == "last":
        out += 2 * n_seq * m.d_vocab * 4
    elif logits == "all":
        out += N * m.d_vocab * (b + 12)
    return out


def kv_cache_bytes(m: ModelShape, n_seq: int, T: int, b: int) -> int:
    return 2 * m.n_layers * m.n_kv_heads * m.d_head * n_seq * T * b


def stats_state_bytes(d_sae: int, top_k: int = 16, window: int = 8, reservoir: int = 32, hist_bins: int = 40) -> int:
    """``StatsAccumulator`` of ``d_sae`` features (its defaults match ``StatsConfig``'s)."""
    w = 2 * window + 1
    per = top_k * (4 + 8 * w) + reservoir * (8 + 8 * w) + 8 * hist_bins + 16
    return d_sae * per


def stats_update_bytes(d_sae: int, top_k: int = 16, window: int = 8, reservoir: int = 32,
                       active: int | None = None) -> int:
    """Transient of one ``StatsAccumulator.update``: context windows (int64 [candidates, 2 window + 1]) gathered
    for the batch's candidates that enter a feature's top-k or reservoir, about seven such tensors at once
    (measured with PyTorch's profiler). Candidates: at most d_sae x max(top_k, reservoir), and at most the
    batch's active entries ``active`` when known (a TopK SAE: tokens x k)."""
    candidates = d_sae * max(top_k, reservoir)
    if active is not None:
        candidates = min(candidates, 2 * active)        # the top-k and the reservoir draw from the same entries
    return 7 * candidates * (2 * window + 1) * 8


def task_items(task: str, m: ModelShape | None, s: SAEShape, size: int, T: int, bm: int, bs: int,
               resident: bool = True, with_model: bool = True) -> dict[str, int]:
    """Bytes per item for ``task`` at ``size`` (sequences of ``T``; train: tokens). ``resident=False`` leaves out
    the weights (already on the device); ``with_model=False`` trains from cached activations (no model)."""
    items: dict[str, int] = {}
    if resident and m is not None and (task != "train" or with_model):
        items["model weights"] = m.n_params * bm + m.buffer_bytes
    if task == "train":
        return {**items, **_train_items(m, s, size, bm, bs, with_model)}
    if resident:
        items["SAE weights"] = s.n_params * bs
    N = size * T
    logits = {"steer": "last", "eval": "all"}.get(task, "none")
    items["model activations"] = forward_bytes(m, size, T, bm, logits)
    if task == "steer":
        items["KV cache"] = kv_cache_bytes(m, size, T, bm)
    items["SAE activations"] = int(SAE_COPIES[task] * N * s.d_sae * bs) + 2 * N * s.d_in * 4
    if task == "stats":
        items["statistics state"] = stats_state_bytes(s.d_sae)
        items["statistics update"] = stats_update_bytes(s.d_sae, active=N * s.k if s.k else None)
    return items


def _train_items(m, s: SAEShape, B: int, bm: int, bs: int, with_model: bool) -> dict[str, int]:
    half = bs < 4                                          # autocast: matmuls in half precision
    items = {"training state": 16 * s.n_params + (4 * s.d_in * s.d_sae if half else 0),
             "training batch": int(2.25 * B * s.d_sae * (2 if half else 4)) + 6 * B * s.d_in * 4 + 8 * s.d_sae}
    if with_model and m is not None:
        harvest = 32                                       # TrainConfig.harvest_batch_size contexts of 128
        items["model activations"] = forward_bytes(m, harvest, 128, bm, "none")
        items["activation buffer"] = 65536 * s.d_in * 4   # TrainConfig.buffer_tokens
    return items


# ------------------------------------------------------------------------------------------------- search
def _largest(fits, hi: int) -> int:
    """Largest n in [1, hi] with fits(n) (monotone), 0 if none."""
    if not fits(1):
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _recommended(largest: int, cap: int) -> int:
    """``min(largest, cap)`` rounded down to a power of two (full batches beyond ``cap`` buy no speed)."""
    n = max(1, min(largest, cap))
    return 1 << (n.bit_length() - 1)


def plan_task(task: str, model: ModelShape | None, sae: SAEShape, budget: Budget, *, dtype: str = "float32",
              train_dtype: str = "float32", context: int | None = None, batch_tokens: int | None = None,
              resident: bool = True, with_model: bool = True, cap: int | None = None) -> TaskPlan:
    """Plan ``task`` (read | steer | train | stats | eval). ``dtype``: the model's; the SAE's is ``sae.dtype``
    (float32 on a CPU, where half-precision SAEs are computed in float32); ``train_dtype``: the training compute
    dtype (bfloat16/float16: autocast over float32 master weights). ``context``: tokens per sequence (default:
    read, steer: the model's n_ctx up to 1024; stats, eval: 128). ``batch_tokens``: check this many tokens in
    flight instead of choosing. Otherwise the size is the largest that fits, capped at ``cap`` (default
    ``DEFAULT_CAPS``) and rounded down to a power of two; ``largest`` in the plan is the uncapped figure."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")
    if model is None and (task != "train" or with_model):
        raise InputError(f"task {task}: needs the model's shape")
    bm = dtype_bytes(dtype, "--dtype")
    bs = dtype_bytes(train_dtype if task == "train" else sae.dtype, "SAE dtype")
    if budget.device == "cpu" and task != "train":
        bs = max(bs, 4)
    if task == "train":
        T, unit, hi = 1, "tokens per step", MAX_SEARCH
    else:
        default = min(model.n_ctx, 1024) if task in ("read", "steer") else min(model.n_ctx, 128)
        T = min(context or default, model.n_ctx)
        unit = "sequences generated at once" if task == "steer" else "sequences per forward"
        hi = max(1, MAX_SEARCH // T)

    def items(n: int) -> dict[str, int]:
        return task_items(task, model, sae, n, T, bm, bs, resident, with_model)

    largest = _largest(lambda n: sum(items(n).values()) <= budget.usable, hi)
    if batch_tokens is not None:
        size = max(1, math.ceil(batch_tokens / T))
    else:
        size = _recommended(largest, cap or DEFAULT_CAPS[task])
    plan = TaskPlan(task, size <= largest, size, unit, T, items(size), budget, largest, batch_tokens is not None)
    plan.notes.extend(_notes(plan, bm, bs))
    return plan


def _notes(plan: TaskPlan, bm: int, bs: int) -> list[str]:
    notes = []
    weights = sum(v for k, v in plan.items.items() if "weights" in k or k == "training state")
    if weights > plan.budget.usable:
        notes.append(f"the weights alone ({format_bytes(weights)}) exceed the usable {format_bytes(plan.budget.usable)}"
                     + ("; try --dtype bfloat16" if bm == 4 or bs == 4 else ""))
    elif not plan.fits:
        notes.append(f"needs {format_bytes(plan.total)} at this size, {format_bytes(plan.budget.usable)} usable")
    if plan.task == "steer" and plan.fits:
        notes.append("the prompt may fill the context; generation from shorter prompts needs less")
    return notes


def plan_all(model: ModelShape, sae: SAEShape, budget: Budget, tasks=TASKS, **kw) -> dict[str, TaskPlan]:
    """``plan_task`` for each task."""
    return {t: plan_task(t, model, sae, budget, **kw) for t in tasks}


def pick_batch_size(task: str, lm, sae, context_size: int, device=None, memory=None, cap: int | None = None) -> int:
    """Sequences of ``context_size`` tokens per forward pass for ``task`` ("stats" or "eval"; also "read") that fit
    beside the already loaded ``lm`` and ``sae`` on their device now (or on a card of ``memory``, weights counted).
    Raises ``InputError`` when not even one sequence fits."""
    from .shapes import ModelShape, SAEShape

    dev = str(device or getattr(sae, "device", "cpu"))
    budget = device_budget(memory, "cpu" if dev == "cpu" else dev)
    m, s = ModelShape.from_lm(lm), SAEShape.from_sae(sae)
    dtype = str(getattr(lm, "dtype", "float32")).removeprefix("torch.")
    plan = plan_task(task, m, s, budget, dtype=dtype, context=context_size, resident=memory is not None, cap=cap)
    if not plan.fits:
        raise InputError(f"{task} of a {s.d_sae:,}-feature SAE on {m.name}: one sequence of {plan.context} tokens "
                         f"needs {format_bytes(plan.total)}, only {format_bytes(budget.usable)} usable "
                         f"({budget.source})")
    return plan.size


def fitting_batch_size(task: str, att, context_size: int, wanted: int) -> int:
    """``wanted`` sequences per forward pass, or fewer when the attached model and SAE sit on a GPU whose free
    memory holds fewer (``pick_batch_size``). On the CPU ``wanted`` is kept as it is: results that depend on the
    batching (the statistics' reservoir samples) then never depend on the memory free at the time."""
    if att.sae.device.type != "cuda":
        return wanted
    got = pick_batch_size(task, att.lm, att.sae, context_size, cap=wanted)
    if got < wanted:
        log.info("%s: %d sequences of %d tokens per pass fit the GPU (asked for %d)", task, got, context_size, wanted)
    return got
