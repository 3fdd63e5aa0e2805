"""Sampling and the KV-cached generation loop; active interventions apply to the prompt pass and every new token."""
from __future__ import annotations

import torch

from ..errors import InputError, NumericsError
from .hooks import _Pass


def pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
         gen: torch.Generator | None) -> torch.Tensor:
    """logits [b, d_vocab] -> next token ids [b]."""
    if not do_sample or temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p    # keep the smallest prefix whose mass reaches top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_p, 1, generator=gen)
        return order.gather(-1, choice)[:, 0]
    return torch.multinomial(probs, 1, generator=gen)[:, 0]


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
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.hf_model.config)
    positions = lm._positions(ids, mask)
    kwargs = {"input_ids": ids, "past_key_values": cache, "use_cache": True, "logits_to_keep": 1}
    if mask is not None:
        kwargs["attention_mask"] = mask
        kwargs["position_ids"] = positions.clamp(min=0)
    state = _Pass(None, None, positions, prompt_lengths=lengths, step=0)
    eos = lm.info.eos_token_id
    finished = torch.zeros(b, dtype=torch.bool, device=ids.device)
    new_tokens = []
    with lm._hooked(state):
        for step in range(1, max_new_tokens + 1):
            logits = lm.hf_model(**kwargs).logits[:, -1]
            if not torch.isfinite(logits).all():
                raise NumericsError(f"model {lm.name} produced NaN/inf logits at generation step {step} "
                                    "(check the interventions)")
            nxt = pick(logits, do_sample, temperature, top_p, gen)
            if stop_at_eos and eos is not None:
                nxt = torch.where(finished, torch.full_like(nxt, lm._pad_id), nxt)
                finished |= nxt == eos
            new_tokens.append(nxt)
            if step == max_new_tokens or (stop_at_eos and bool(finished.all())):
                break
            state.positions = (lengths + step - 1)[:, None]
            state.step = step
            kwargs = {"input_ids": nxt[:, None], "past_key_values": cache, "use_cache": True}
            if mask is not None:
                mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=mask.device)], dim=1)
                kwargs["attention_mask"] = mask
                kwargs["position_ids"] = state.positions
    return torch.cat([ids, torch.stack(new_tokens, dim=1)], dim=1) if new_tokens else ids


def decode_new(lm, out: torch.Tensor, p: int, stop_at_eos: bool) -> list[str]:
    """The generated part of ``out`` [b, p + n] as text, cut before the first EOS when ``stop_at_eos``."""
    eos = lm.info.eos_token_id
    texts = []
    for row in out[:, p:].tolist():
        if stop_at_eos and eos is not None and eos in row:
            row = row[: row.index(eos)]
        texts.append(lm.tokenizer.decode(row))
    return texts
