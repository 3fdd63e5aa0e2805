"""Explainers (a feature's examples -> one sentence), the seeded explain/score split, and non-activating contexts.

    split = split_examples(record, explain_fraction=0.6, max_explain=10, seed=0)
        split.explain: top-activating examples shown to the explainer
        split.held_out: activating examples kept for scoring (the other top examples and the interval samples)
    LLMExplainer(client).explain(record, split.explain) -> Explained(text, model, prompt_tokens, completion_tokens)
    TokenExplainer().explain(record, split.explain)     -> an offline explanation naming the top tokens (no LLM)
    NegativePool.from_store(store, seed=0).sample(record, n, rng) -> [Example]   contexts presumed not activating
    NegativePool.from_model(lm, sae, source).sample(record, n, rng)             contexts verified not activating
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass

from .prompts import PROMPT_VERSION, explain_messages, parse_explanation, top_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Explained:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Split:
    explain: list          # [Example] shown to the explainer
    held_out: list         # [Example] activating, never shown to the explainer


def _key(ex) -> tuple:
    return (tuple(ex.ids), ex.center)


def split_examples(rec, explain_fraction: float = 0.6, max_explain: int = 10, seed: int = 0) -> Split:
    """A seeded share of the top examples to explain from; the rest of the top examples and every interval sample
    (except duplicates of an explained window) are held out for scoring. Same record and seed -> same split."""
    top = [e for e in rec.top if max(e.acts, default=0.0) > 0]
    rng = random.Random(f"split|{seed}|{rec.index}")
    n = max(1, min(max_explain, round(explain_fraction * len(top)))) if top else 0
    if len(top) >= 2:
        n = min(n, len(top) - 1)          # keep at least one top example for scoring
    chosen = set(rng.sample(range(len(top)), n))
    explain = [e for i, e in enumerate(top) if i in chosen]
    seen = {_key(e) for e in explain}
    held = []
    for e in [e for i, e in enumerate(top) if i not in chosen] + [e for iv in rec.intervals for e in iv["examples"]]:
        if _key(e) not in seen and max(e.acts, default=0.0) > 0:
            seen.add(_key(e))
            held.append(e)
    return Split(explain, held)


class LLMExplainer:
    """Asks a chat model (``ChatClient`` or ``LocalChatClient``) for a one-sentence explanation."""
    method = PROMPT_VERSION

    def __init__(self, client, max_tokens: int = 200):
        self.client, self.max_tokens = client, max_tokens
        self.model = client.name

    def settings(self) -> dict:
        config = getattr(self.client, "config", None)
        return {"max_tokens": self.max_tokens, "temperature": getattr(config, "temperature", 0.0)}

    def explain(self, rec, examples) -> Explained:
        reply = self.client.chat(explain_messages(examples, rec.max), max_tokens=self.max_tokens)
        return Explained(parse_explanation(reply.text), reply.model, reply.prompt_tokens, reply.completion_tokens)


class TokenExplainer:
    """No LLM: 'the tokens "X", "Y"' from the tokens carrying the most activation in the examples. A baseline
    and an offline fallback (its explanations are marked ``method="tokens"``)."""
    method = "tokens"
    model = "none"

    def __init__(self, k: int = 3):
        self.k = k

    def settings(self) -> dict:
        return {"k": self.k}

    def explain(self, rec, examples) -> Explained:
        toks = top_tokens(examples, self.k)
        if not toks:
            return Explained("no activating tokens", self.model)
        word = "token" if len(toks) == 1 else "tokens"
        return Explained(f"the {word} " + ", ".join(json.dumps(t, ensure_ascii=False) for t in toks), self.model)


class NegativePool:
    """Contexts to use as non-activating ones.

    ``from_store``: top examples of other features of the same store. The store keeps only each feature's own
    activations, so for a feature f a context of another feature is *presumed* non-activating. To keep that
    presumption good, contexts are excluded when they come from f or a feature that co-fires with f, or contain a
    token id on which f is active in any of its recorded examples (``source = "store (presumed)"``).

    ``from_model``: windows of a text source run through the model and the SAE; a window is used for f only when
    f is 0 on every token of it, in its full context (``source = "text (verified)"``).
    """
    source = "store (presumed)"

    def __init__(self, contexts: list[tuple[int, object]], active: list[frozenset] | None = None, source: str | None = None):
        self.contexts = contexts            # [(owner feature or -1, Example)]
        self.active = active                # per context: the features active on it (verified pools)
        if source:
            self.source = source

    @classmethod
    def from_model(cls, lm, sae, source, n_contexts: int = 256, context_size: int = 64, window: int = 5,
                   batch_size: int = 8, seed: int = 0) -> "NegativePool":
        """Non-overlapping windows of ``2 * window + 1`` tokens from ``n_contexts`` contexts of ``source`` (a dataset
        name, file or iterable of texts), with the set of features active on each (BOS/EOS positions excluded)."""
        import torch

        from ..data import contexts_from
        from ..report.stats import Example, vocab_strings
        from ..site import attach

        att = attach(lm, sae)
        vocab = vocab_strings(lm)
        special = {t for t in (lm.info.bos_token_id, lm.info.eos_token_id) if t is not None}
        width = 2 * window + 1
        ctxs = []
        for ctx in contexts_from(lm, source, context_size, prepend_bos=att.prepend_bos, seed=seed):
            ctxs.append(ctx)
            if len(ctxs) == n_contexts:
                break
        out, active = [], []
        for s in range(0, len(ctxs), batch_size):
            batch = torch.stack(ctxs[s:s + batch_size])
            with torch.no_grad():
                f = att.features(batch.to(lm.device)).cpu() > 0                 # [B, T, d_sae]
            for b, row in enumerate(batch.tolist()):
                for lo in range(0, len(row) - width + 1, width):
                    ids = row[lo:lo + width]
                    if special.intersection(ids):
                        continue
                    on = f[b, lo:lo + width].any(0).nonzero().flatten().tolist()
                    out.append((-1, Example([vocab[i] for i in ids], ids, [0.0] * width, window, 0.0)))
                    active.append(frozenset(on))
        if not out:
            from ..errors import InputError

            raise InputError(f"{source!s:.80}: gave no windows of {width} tokens for non-activating contexts; use more text")
        return cls(out, active, "text (verified)")

    @classmethod
    def from_store(cls, store, n_features: int = 400, per_feature: int = 4, seed: int = 0) -> "NegativePool":
        """Up to ``per_feature`` top examples of each of ``n_features`` features drawn with ``seed``."""
        ids = [s.index for s in store.summaries() if s.max > 0]
        rng = random.Random(f"negatives|{seed}")
        picked = sorted(rng.sample(ids, min(n_features, len(ids))))
        out = []
        for i in picked:
            rec = store.get(i)
            for ex in (rec.top if rec else [])[:per_feature]:
                out.append((i, ex))
        return cls(out)

    def sample(self, rec, n: int, rng: random.Random) -> list:
        """Up to ``n`` contexts presumed not to activate ``rec``'s feature (each with zero activations)."""
        from ..report.stats import Example

        if self.active is not None:
            ok = [ex for (_, ex), on in zip(self.contexts, self.active) if rec.index not in on]
        else:
            banned_feats = {rec.index} | {c["index"] for c in rec.cofire}
            active_ids = {t for ex in rec.top + [e for iv in rec.intervals for e in iv["examples"]]
                          for t, a in zip(ex.ids, ex.acts) if a > 0}
            ok = [ex for owner, ex in self.contexts if owner not in banned_feats and not active_ids.intersection(ex.ids)]
        chosen = rng.sample(ok, min(n, len(ok)))
        return [Example(list(ex.tokens), list(ex.ids), [0.0] * len(ex.tokens), ex.center, 0.0) for ex in chosen]
