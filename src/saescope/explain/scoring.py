"""Scoring explanations: detection and fuzzing, balanced accuracy and AUROC, pluggable judges.

- **detection**: a judge reads the explanation and a shuffled mix of held-out activating contexts and
  non-activating contexts, and gives for each the probability that the feature is active in it;
- **fuzzing**: held-out activating contexts with tokens marked, either exactly the tokens where the feature is
  active or as many tokens chosen at random where it is not; the judge gives the probability that the marks are
  correct.

Metrics: balanced accuracy ``(TPR + TNR) / 2`` at probability 0.5, and AUROC (Mann-Whitney, ties count 1/2);
None when a class is missing. A judge answers ``judge(kind, explanation, items) -> [p | None]``:
``LLMJudge`` (a chat model), ``OracleJudge`` (reads the true activations), ``CoinFlipJudge`` (seeded),
``ConstantJudge`` and ``TokenMatchJudge`` (takes a token-list explanation literally) plug in the same way.
The judge never sees ``Context.acts`` or ``Context.label`` unless it is the oracle.
"""
from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field

from .prompts import ParseError, judge_messages, parse_probabilities, render, show_token

log = logging.getLogger(__name__)

KINDS = ("detection", "fuzzing")


@dataclass(frozen=True)
class Context:
    """One item to judge: a window's ``tokens``, the feature's true ``acts`` on them, the ``marks`` shown (fuzzing)
    and the truth ``label`` (detection: the feature is active; fuzzing: the marks are the active tokens)."""
    tokens: tuple[str, ...]
    acts: tuple[float, ...]
    label: bool
    marks: tuple[int, ...] | None = None

    def text(self) -> str:
        return render(list(self.tokens), set(self.marks) if self.marks is not None else None)


@dataclass
class ScoreResult:
    scorer: str                      # "detection" | "fuzzing"
    judge: str                       # "llm:<model>" | "oracle" | "coin-flip" | "constant:<p>"
    metrics: dict                    # {"balanced_accuracy": float | None, "auroc": float | None}
    n: int                           # items with an answer
    n_positive: int
    n_negative: int
    n_unanswered: int = 0
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"scorer": self.scorer, "judge": self.judge, "metrics": dict(self.metrics), "n": self.n,
                "n_positive": self.n_positive, "n_negative": self.n_negative, "n_unanswered": self.n_unanswered,
                "details": dict(self.details)}


# ---------------------------------------------------------------------- metrics


def balanced_accuracy(labels: list[bool], probs: list[float], threshold: float = 0.5) -> float | None:
    """``(TPR + TNR) / 2`` with prediction ``p >= threshold``; None when either class is absent."""
    pos = [p for y, p in zip(labels, probs) if y]
    neg = [p for y, p in zip(labels, probs) if not y]
    if not pos or not neg:
        return None
    tpr = sum(p >= threshold for p in pos) / len(pos)
    tnr = sum(p < threshold for p in neg) / len(neg)
    return (tpr + tnr) / 2


def auroc(labels: list[bool], probs: list[float]) -> float | None:
    """Area under the ROC curve: P(p_pos > p_neg) + P(tie) / 2 over all positive/negative pairs (by ranks)."""
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(probs)), key=lambda i: probs[i])
    ranks = [0.0] * len(probs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and probs[order[j + 1]] == probs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1          # average rank of a tie group (1-based)
        i = j + 1
    rank_pos = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def metrics_of(items: list[Context], probs: list[float | None]) -> tuple[dict, int, int]:
    """Metrics over the answered items -> (metrics, n answered, n unanswered)."""
    pairs = [(c.label, p) for c, p in zip(items, probs) if p is not None]
    labels, ps = [y for y, _ in pairs], [p for _, p in pairs]
    return ({"balanced_accuracy": balanced_accuracy(labels, ps), "auroc": auroc(labels, ps)}, len(pairs),
            len(items) - len(pairs))


# ---------------------------------------------------------------------- judges


class OracleJudge:
    """Answers from the true activations: what a perfect explanation and a perfect reader would give."""
    name = "oracle"

    def judge(self, kind: str, explanation: str, items: list[Context]) -> list[float | None]:
        if kind == "detection":
            return [1.0 if any(a > 0 for a in c.acts) else 0.0 for c in items]
        return [1.0 if set(c.marks or ()) == {i for i, a in enumerate(c.acts) if a > 0} else 0.0 for c in items]


class CoinFlipJudge:
    """Uniform random probabilities, seeded by (seed, kind, explanation, items): the chance baseline."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.name = "coin-flip"

    def judge(self, kind: str, explanation: str, items: list[Context]) -> list[float | None]:
        rng = random.Random(f"{self.seed}|{kind}|{explanation}|{[c.text() for c in items]}")
        return [rng.random() for _ in items]


class ConstantJudge:
    """The same probability for every item (``1.0``: always yes)."""

    def __init__(self, p: float = 1.0):
        self.p = float(p)
        self.name = f"constant:{self.p:g}"

    def judge(self, kind: str, explanation: str, items: list[Context]) -> list[float | None]:
        return [self.p for _ in items]


class TokenMatchJudge:
    """No LLM: reads the quoted tokens of an explanation (``TokenExplainer``'s 'the tokens "X", "Y"') literally.
    Detection: active when a quoted token occurs in the context; fuzzing: the marks are correct when every marked
    token is a quoted one. A reader that takes a token-list explanation at its word; None without quoted tokens."""
    name = "token-match"

    def judge(self, kind: str, explanation: str, items: list[Context]) -> list[float | None]:
        named = _quoted(explanation)
        if not named:
            return [None for _ in items]
        if kind == "detection":
            return [1.0 if named & {_plain(t) for t in c.tokens} else 0.0 for c in items]
        return [1.0 if c.marks and all(_plain(c.tokens[i]) in named for i in c.marks) else 0.0 for c in items]


def _plain(token: str) -> str:
    return show_token(token).strip() or repr(token)


def _quoted(text: str) -> set[str]:
    """The JSON-quoted strings in ``text`` ('the tokens "a", "\\"b"' -> {"a", '"b'})."""
    out = set()
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"', text):
        try:
            out.add(json.loads(m.group(0)).strip())
        except json.JSONDecodeError:
            continue
    return out - {""}


class LLMJudge:
    """A chat model reads the explanation and batches of ``batch_size`` rendered contexts (see ``prompts``).
    A batch whose reply cannot be read leaves its items unanswered (counted in ``n_unanswered``)."""

    def __init__(self, client, batch_size: int = 10, max_tokens: int = 200):
        self.client, self.batch_size, self.max_tokens = client, batch_size, max_tokens
        self.name = f"llm:{client.name}"

    def judge(self, kind: str, explanation: str, items: list[Context]) -> list[float | None]:
        out: list[float | None] = []
        for s in range(0, len(items), self.batch_size):
            batch = items[s:s + self.batch_size]
            reply = self.client.chat(judge_messages(kind, explanation, [c.text() for c in batch]),
                                     max_tokens=max(self.max_tokens, 12 * len(batch)))
            try:
                out.extend(parse_probabilities(reply.text, len(batch)))
            except ParseError as exc:
                log.info("%s", exc)
                out.extend([None] * len(batch))
        return out


# ---------------------------------------------------------------------- building the items


def detection_items(positives, negatives, n_positive: int, n_negative: int, rng: random.Random) -> list[Context]:
    """Up to ``n_positive`` activating (held-out Example) and ``n_negative`` non-activating contexts, shuffled."""
    pos = rng.sample(list(positives), min(n_positive, len(positives)))
    neg = rng.sample(list(negatives), min(n_negative, len(negatives)))
    items = [Context(tuple(e.tokens), tuple(e.acts), True) for e in pos]
    items += [Context(tuple(e.tokens), tuple(e.acts), False) for e in neg]
    rng.shuffle(items)
    return items


def fuzzing_items(positives, n: int, rng: random.Random) -> list[Context]:
    """Up to ``n`` held-out activating contexts, half marked correctly (the tokens where the feature is active) and
    half marked at random (as many tokens, where it is not active), shuffled. Contexts with no inactive token
    to mark are only used correctly marked."""
    pool = rng.sample(list(positives), min(n, len(positives)))
    items = []
    for j, e in enumerate(pool):
        active = [i for i, a in enumerate(e.acts) if a > 0]
        inactive = [i for i, a in enumerate(e.acts) if a <= 0]
        if not active:
            continue
        wrong = j % 2 == 1 and len(inactive) >= len(active)
        marks = sorted(rng.sample(inactive, len(active))) if wrong else active
        items.append(Context(tuple(e.tokens), tuple(e.acts), not wrong, tuple(marks)))
    rng.shuffle(items)
    return items


def score(kind: str, explanation: str, items: list[Context], judge) -> ScoreResult:
    """Ask ``judge`` about ``items`` and compute the metrics."""
    probs = judge.judge(kind, explanation, items) if items else []
    if len(probs) != len(items):
        raise ValueError(f"judge {judge.name} answered {len(probs)} of {len(items)} items")
    metrics, n, unanswered = metrics_of(items, probs)
    return ScoreResult(kind, judge.name, metrics, n, sum(c.label for c in items), sum(not c.label for c in items),
                       unanswered)
