"""Prompts for explaining and scoring features, and robust parsing of the answers.

Contexts are shown compactly: the window's text with the tokens where the feature is active marked
``<<token>>`` and, for explaining, followed by the activation level 1..10 (relative to the feature's max)::

    He said that <<God>>(10) knows the truth

Answers are parsed leniently (reasoning blocks, markdown, quotes, JSON or numbered lines) but never guessed:
what cannot be read is a ``ParseError`` (the request counts as failed).
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter

from ..errors import SaescopeError

PROMPT_VERSION = "saescope-explain-1"        # part of the explainer/scorer keys: a new prompt is a new method
MAX_EXPLANATION_CHARS = 400

EXPLAIN_SYSTEM = (
    "You explain one feature of a language model's internal representation (a sparse autoencoder latent). "
    "You are shown text excerpts on which the feature is active. The tokens where it is active are marked "
    "<<like this>>, each followed by its activation level from 1 (weak) to 10 (strongest). Work out what the "
    "marked tokens have in common (the tokens themselves, their meaning, or the context around them) and describe "
    "it in one short sentence, without listing the examples. Reply with exactly one line:\n"
    "Explanation: <one sentence>")

DETECT_SYSTEM = (
    "You check an explanation of a language model feature. Given the explanation and numbered text excerpts, "
    "decide for each excerpt whether the feature is active anywhere in it. Reply with one line per excerpt, "
    "in the form '<number>: <probability>', where probability (0 to 1) is how likely the feature is active in "
    "that excerpt. Reply with nothing else.")

FUZZ_SYSTEM = (
    "You check an explanation of a language model feature. Each numbered text excerpt has some tokens marked "
    "<<like this>>. In some excerpts the marked tokens are exactly the tokens the feature is active on; in the "
    "others they were marked at random. For each excerpt, decide whether its marks are the feature's real "
    "activations. Reply with one line per excerpt, in the form '<number>: <probability>', where probability "
    "(0 to 1) is how likely the marks are correct. Reply with nothing else.")


class ParseError(SaescopeError):
    """An answer that cannot be read."""


def show_token(token: str) -> str:
    """A token as shown in prompts: newlines as ↵, carriage returns dropped."""
    return token.replace("\r", "").replace("\n", "↵")


def render(tokens: list[str], marks: dict[int, int] | set[int] | None) -> str:
    """The window's text with tokens at ``marks`` shown ``<<tok>>`` (``<<tok>>(level)`` when marks maps to levels).
    A token's leading whitespace stays outside the marks."""
    out = []
    for i, tok in enumerate(tokens):
        t = show_token(tok)
        if marks is not None and i in marks:
            core = t.lstrip()
            lead = t[: len(t) - len(core)]
            level = marks[i] if isinstance(marks, dict) else None
            t = f"{lead}<<{core}>>" + (f"({level})" if level is not None else "")
        out.append(t)
    return "".join(out).strip()


def levels(acts: list[float], max_act: float) -> dict[int, int]:
    """Positions with a positive activation -> level 1..10 relative to ``max_act``."""
    top = max_act if max_act > 0 else max(acts, default=0.0)
    if top <= 0:
        return {}
    return {i: max(1, min(10, math.ceil(10 * a / top))) for i, a in enumerate(acts) if a > 0}


def top_tokens(examples, k: int = 5) -> list[str]:
    """The tokens carrying the most activation mass over ``examples`` (stripped, most first)."""
    mass: Counter = Counter()
    for ex in examples:
        for tok, a in zip(ex.tokens, ex.acts):
            if a > 0:
                mass[show_token(tok).strip() or repr(tok)] += a
    return [t for t, _ in mass.most_common(k)]


def explain_messages(examples, max_act: float) -> list[dict]:
    """Chat messages asking for an explanation of a feature from its activating ``examples`` (Example objects)."""
    lines = [f"Tokens with the most activation: {', '.join(top_tokens(examples)) or '(none)'}", "", "Excerpts:"]
    for j, ex in enumerate(examples, 1):
        lines.append(f"{j}. {render(ex.tokens, levels(ex.acts, max_act))}")
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def judge_messages(kind: str, explanation: str, excerpts: list[str]) -> list[dict]:
    """Chat messages for a detection (``kind="detection"``) or fuzzing batch of already rendered excerpts."""
    system = DETECT_SYSTEM if kind == "detection" else FUZZ_SYSTEM
    body = [f"Explanation: {explanation}", "", "Excerpts:"]
    body += [f"{j}. {text}" for j, text in enumerate(excerpts, 1)]
    body += ["", f"Reply with {len(excerpts)} lines, '1: <probability>' to '{len(excerpts)}: <probability>'."]
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(body)}]


_THINK = re.compile(r"<(think|thinking|reasoning)>.*?(</\1>|$)", re.S | re.I)
_LABEL = re.compile(r"^\W*(?:final\s+)?explanation\s*\W*\s*:\s*\**\s*(.*)$", re.I)


def _strip_reasoning(text: str) -> str:
    return _THINK.sub("", text)


def parse_explanation(text: str) -> str:
    """The explanation in a reply: the text after the last ``Explanation:`` or else the first non-empty line,
    without markdown emphasis or enclosing quotes, whitespace collapsed. Everything else is kept verbatim."""
    lines = [ln.strip() for ln in _strip_reasoning(text).splitlines() if ln.strip() and not ln.strip().startswith("```")]
    found = None
    for ln in lines:
        m = _LABEL.match(ln)
        if m:
            found = m.group(1)
    if found is None:
        found = lines[0] if lines else ""
    found = " ".join(found.split()).strip()
    for _ in range(2):
        found = found.strip("*_ ").strip()
        if len(found) >= 2 and found[0] == found[-1] and found[0] in "\"'`":
            found = found[1:-1].strip()
        if len(found) >= 2 and found[0] in "“‘" and found[-1] in "”’":
            found = found[1:-1].strip()
    if not found:
        raise ParseError(f"no explanation in the reply {_snip(text)!r}")
    if len(found) > MAX_EXPLANATION_CHARS:
        found = found[: MAX_EXPLANATION_CHARS - 1].rstrip() + "…"
    return found


_WORDS = {"yes": 1.0, "true": 1.0, "active": 1.0, "correct": 1.0, "no": 0.0, "false": 0.0, "inactive": 0.0,
          "incorrect": 0.0}
_LINE = re.compile(r"^\W*(?:excerpt\s*)?(\d+)\s*[:.)\-=]\s*\**\s*([A-Za-z]+|[-+]?\d*\.?\d+(?:e[-+]?\d+)?)\s*(%?)", re.I)


def _prob(token: str, pct: str) -> float | None:
    low = token.lower()
    if low in _WORDS:
        return _WORDS[low]
    try:
        v = float(token)
    except ValueError:
        return None
    if pct:
        v /= 100.0
    return v if 0.0 <= v <= 1.0 else None


def parse_probabilities(text: str, n: int) -> list[float | None]:
    """``n`` probabilities from a reply: numbered lines ``k: p`` (p a number in [0, 1], a percentage or yes/no),
    or a JSON array of ``n`` numbers. Items the reply does not give are None; a reply giving none is a ParseError."""
    body = _strip_reasoning(text)
    out: list[float | None] = [None] * n
    for ln in body.splitlines():
        m = _LINE.match(ln.strip())
        if m:
            k = int(m.group(1))
            if 1 <= k <= n:
                out[k - 1] = _prob(m.group(2), m.group(3))
    if all(v is None for v in out):
        for m in re.finditer(r"\[[^\[\]]*\]", body):
            try:
                arr = json.loads(m.group(0))
            except json.JSONDecodeError:
                continue
            if isinstance(arr, list) and len(arr) == n:
                out = [_prob(str(v).lower(), "") if isinstance(v, (int, float, bool, str)) else None for v in arr]
                break
    if all(v is None for v in out):
        raise ParseError(f"no probabilities for {n} excerpts in the reply {_snip(text)!r}")
    return out


def _snip(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"
