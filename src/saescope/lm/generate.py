"""Sampling and the KV-cached generation loop; active interventions apply to the prompt pass and every new token."""
from __future__ import annotations

import torch

from ..errors import InputError, NumericsError
from .hooks import _Pass


def _scaled_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(logits - max) / T`` in float32 (float64 stays float64): exactly 0 at the maximum and <= 0 (or -inf)
    elsewhere, also when T underflows to 0 in that dtype (1e-45, 1e-320), so exp() is finite for every T > 0."""
    z = logits.float() if logits.dtype != torch.float64 else logits
    z = z - z.max(dim=-1, keepdim=True).values
    return torch.where(z == 0, z, z / temperature)


def pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
         gen: torch.Generator | None) -> torch.Tensor:
    """logits [b, d_vocab] -> next token ids [b].

    Sampling draws ``argmax(p / E)`` with ``E ~ Exp(1)`` i.i.d. (exactly a draw from ``p``), where
    ``p = exp((logits - max) / T)`` (unnormalised, max 1): finite for every T > 0, argmax as T -> 0,
    and a row of NaN logits yields some index instead of a crash (the caller reports it as NumericsError).
    """
    if not do_sample or temperature == 0:
        return logits.argmax(-1)
    p = _scaled_logits(logits, float(temperature)).exp_()
    order = None
    if top_p < 1.0:
        p, order = p.sort(dim=-1, descending=True)
        cum = p.cumsum(-1)
        drop = cum - p > top_p * cum[..., -1:]     # keep the smallest prefix whose mass reaches top_p
        p = p.masked_fill_(drop, 0.0)
    noise = torch.empty_like(p).exponential_(generator=gen).clamp_(min=torch.finfo(p.dtype).tiny)
    choice = (p / noise).argmax(-1)
    return choice if order is None else order.gather(-1, choice[:, None])[:, 0]


def check_args(max_new_tokens, temperature, top_p) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and 0 <= temperature < float("inf")):
        raise InputError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise InputError(f"top_p must be in (0, 1], got {top_p!r}")


def left_pad(ids: torch.Tensor, mask: torch.Tensor | None):
    """Right-padded prompts -> left-padded (every row's last prompt token at column p-1); returns ids, mask, lengths."""
    b, p = ids.shape
    if mask is None:
        return ids, mask, torch.full((b,), p, dtype=torch.long, device=ids.device)
    lengths = mask.sum(-1)
    shift = p - lengths
    cols = (torch.arange(p, device=ids.device)[None, :] - shift[:, None]) % p
    return ids.gather(1, cols), mask.gather(1, cols), lengths


def _generator(device, do_sample: bool, temperature: float, seed: int | None) -> torch.Generator | None:
    if not (do_sample and temperature > 0):
        return None
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(int(seed))
    else:
        gen.seed()
    return gen


CHECK_EVERY = 8      # steps between host checks of the NaN/inf flag and of "every row has stopped"


def _new_cache(hf_model):
    """An empty DynamicCache; newer transformers size it from the model config (feature check, not version)."""
    import inspect

    from transformers import DynamicCache

    if "config" in inspect.signature(DynamicCache.__init__).parameters:
        return DynamicCache(config=hf_model.config)
    return DynamicCache()


def _forward_names(hf_model) -> tuple[str, str | None]:
    """The forward's keyword for the KV cache (``cache`` in current transformers, ``past_key_values`` before) and
    for keeping only the last position's logits (``logits_to_keep``, ``num_logits_to_keep`` or none)."""
    import inspect

    params = inspect.signature(hf_model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return cache_kw, keep_kw


def _step_kwargs(ids, mask, position_ids, cache, cache_kw: str, keep_kw: str | None) -> dict:
    kwargs = {"input_ids": ids, cache_kw: cache, "use_cache": True}
    if keep_kw is not None:
        kwargs[keep_kw] = 1
    if mask is not None:
        kwargs["attention_mask"] = mask
        kwargs["position_ids"] = position_ids
    return kwargs


class _Watch:
    """Device-side flags read on the host only every CHECK_EVERY steps: no per-token synchronisation."""

    def __init__(self, lm, b: int, device, stop_at_eos: bool):
        self.lm, self.eos = lm, lm.info.eos_token_id if stop_at_eos else None
        self.pending: list[torch.Tensor] = []    # per unchecked step: [b] bool, a row saw NaN/inf logits
        self.checked = 0                          # steps already checked
        self.finished = torch.zeros(b, dtype=torch.bool, device=device)
        self.done_at = torch.zeros(b, dtype=torch.long, device=device)     # step of the row's EOS (0 = not yet)

    def logits(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """Record rows with non-finite logits (raised at the next check; ``pick`` does not crash on them)."""
        self.pending.append(~torch.isfinite(logits).all(-1))
        return logits

    def token(self, nxt: torch.Tensor, step: int) -> torch.Tensor:
        if self.eos is None:
            return nxt
        nxt = torch.where(self.finished, torch.full_like(nxt, self.lm._pad_id), nxt)
        hit = (nxt == self.eos) & ~self.finished
        self.done_at = torch.where(hit, torch.full_like(self.done_at, step), self.done_at)
        self.finished |= hit
        return nxt

    def check(self) -> bool:
        """Raise on NaN/inf; True when every row has stopped at EOS. One host synchronisation."""
        if not self.pending:
            return self.eos is not None and bool(self.finished.all())
        bad = torch.stack(self.pending)                                   # [steps, b]
        flags = torch.stack([bad.any(), self.finished.all()]).tolist()
        if flags[0]:
            step = self.checked + int(bad.any(-1).nonzero()[0, 0]) + 1
            raise NumericsError(f"model {self.lm.name} produced NaN/inf logits at generation step {step} "
                                "(check the interventions)")
        self.checked += len(self.pending)
        self.pending.clear()
        return self.eos is not None and bool(flags[1])

    def n_steps(self, done: int) -> int:
        """How many generated columns to keep: up to the last row's EOS once every row has stopped."""
        if self.eos is not None and bool(self.finished.all()):
            return int(self.done_at.max())
        return done


@torch.no_grad()
def generate(lm, ids: torch.Tensor, mask: torch.Tensor | None, max_new_tokens: int, do_sample: bool,
             temperature: float, top_p: float, seed: int | None, stop_at_eos: bool) -> torch.Tensor:
    """Prepared prompt ids [b, p] (right-padded, mask or None) -> LongTensor [b, p + n_new], left-padded."""
    ids, mask, lengths = left_pad(ids, mask)
    b, p = ids.shape
    if p + max_new_tokens > lm.info.n_ctx:
        raise InputError(f"prompt ({p} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context of "
                         f"{lm.info.n_ctx} tokens of model {lm.name}")
    gen = _generator(ids.device, do_sample, temperature, seed)
    cache, (cache_kw, keep_kw) = _new_cache(lm.hf_model), _forward_names(lm.hf_model)
    positions = lm._positions(ids, mask)
    kwargs = _step_kwargs(ids, mask, positions.clamp(min=0), cache, cache_kw, keep_kw)
    state = _Pass(None, None, positions, prompt_lengths=lengths, step=0)
    watch = _Watch(lm, b, ids.device, stop_at_eos)
    new_tokens: list[torch.Tensor] = []
    with lm._hooked(state):
        for step in range(1, max_new_tokens + 1):
            logits = watch.logits(lm.hf_model(**kwargs).logits[:, -1], step)
            new_tokens.append(watch.token(pick(logits, do_sample, temperature, top_p, gen), step))
            if step == max_new_tokens or (step % CHECK_EVERY == 0 and watch.check()):
                break
            state.positions = (lengths + step - 1)[:, None]
            state.step = step
            if mask is not None:
                mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=mask.device)], dim=1)
            kwargs = _step_kwargs(new_tokens[-1][:, None], mask, state.positions, cache, cache_kw, keep_kw)
    if not new_tokens:
        return ids
    watch.check()
    return torch.cat([ids, torch.stack(new_tokens[: watch.n_steps(len(new_tokens))], dim=1)], dim=1)


def decode_new(lm, out: torch.Tensor, p: int, stop_at_eos: bool) -> list[str]:
    """The generated part of ``out`` [b, p + n] as text, cut before the first EOS when ``stop_at_eos``."""
    eos = lm.info.eos_token_id
    texts = []
    for row in out[:, p:].tolist():
        if stop_at_eos and eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(lm.tokenizer.decode(row))
    return texts
