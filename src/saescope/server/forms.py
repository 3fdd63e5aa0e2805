"""The requests the web app accepts, and their errors in plain words.

    request_models(config) -> Forms(read=ReadRequest, steer=SteerRequest, attribute=AttributeRequest)
    validation_message(errors) -> str     pydantic errors -> one sentence naming the field, e.g.
                                          "Features (feature): each entry must be a whole number."
    plain_message(text) -> str            a library message without command-line flags ("--strength" -> "strength")

The sentences name each field by what the form calls it and by its JSON key (in parentheses), never by a
pydantic location ("feature.list[int].0") or a CLI flag, and never echo the value back (it may be unprintable).
"""
from __future__ import annotations

import re
from typing import Literal, NamedTuple

from .._checks import check_positions
from ..errors import SaescopeError

NAMES = {"text": "Text", "top_k": "Top features per token", "feature": "Features", "strength": "Strengths",
         "prompt": "Prompt", "method": "Method", "algebra": "Feature algebra", "positions": "Positions",
         "max_new_tokens": "New tokens", "temperature": "Temperature", "top_p": "Top-p", "seed": "Seed",
         "n": "Samples", "target": "Target token", "target_id": "Target token id", "position": "Position",
         "top": "Contributors to list"}
FLAGS = {"feature": "feature", "strength": "strength", "algebra": "feature algebra", "max-new-tokens": "new tokens",
         "temperature": "temperature", "top-p": "top-p", "seed": "seed", "positions": "positions", "method": "method",
         "top": "top", "target": "target token", "target-id": "target token id", "position": "position"}
_TYPE_PARTS = re.compile(r"^(list\[.*\]|int|float|str|none|function-after\[.*\]|literal\[.*\])$", re.IGNORECASE)


def _field(loc) -> tuple[str, bool]:
    """(field name, whether the error is about one entry of a list) from a pydantic location."""
    parts = [p for p in loc if p != "body" and not (isinstance(p, str) and _TYPE_PARTS.match(p))]
    name = next((p for p in parts if isinstance(p, str)), "")
    return name, any(isinstance(p, int) for p in parts)


def _what(e: dict) -> str:
    t, ctx = e.get("type", ""), e.get("ctx") or {}
    if t == "missing":
        return "is required"
    if t in ("string_too_short",):
        return "is empty" if ctx.get("min_length") == 1 else f"needs at least {ctx.get('min_length')} characters"
    if t == "string_too_long":
        return f"is longer than {ctx.get('max_length')} characters"
    if t in ("int_parsing", "int_type", "int_from_float"):
        return "must be a whole number"
    if t in ("float_parsing", "float_type"):
        return "must be a number"
    if t == "finite_number":
        return "must be a finite number"
    if t in ("string_type",):
        return "must be text"
    if t in ("list_type",):
        return "must be a list"
    if t == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    if t == "less_than_equal":
        return f"must be at most {ctx.get('le')}"
    if t == "greater_than":
        return f"must be more than {ctx.get('gt')}"
    if t == "less_than":
        return f"must be less than {ctx.get('lt')}"
    if t == "too_long":
        return f"has more than {ctx.get('max_length')} entries"
    if t == "literal_error":
        return f"must be one of {ctx.get('expected', '').replace(chr(39), '')}"
    if t == "value_error":
        msg = str(ctx.get("error") or e.get("msg") or "is not valid")
        return ": " + plain_message(re.sub(r"^(Value error,\s*)?(\w+:\s*)?", "", msg))
    return "is not valid"


def validation_message(errors: list[dict]) -> str:
    """The first of pydantic's ``errors`` as one plain sentence naming the field."""
    if not errors:
        return "The request is not valid."
    e = errors[0]
    t = e.get("type", "")
    if t == "json_invalid":
        return "The request is not valid JSON."
    if t in ("model_type", "model_attributes_type", "dict_type"):
        return "The request must be a JSON object of form fields."
    name, entry = _field(e.get("loc", ()))
    if t == "value_error" and not name:        # a check across fields: "field: sentence"
        m = re.match(r"(\w+): (.*)", str((e.get("ctx") or {}).get("error") or ""))
        if m and m.group(1) in NAMES:
            return f"{NAMES[m.group(1)]} ({m.group(1)}): {plain_message(m.group(2)).rstrip('.')}."
    if t == "extra_forbidden":
        return f"{name!r} is not a field of this form." if name else "The request has a field this form does not know."
    if not name:
        return "The request is not valid."
    label = f"{NAMES.get(name, name.replace('_', ' ').capitalize())} ({name})"
    what = _what(e)
    if what.startswith(": "):
        return f"{label}{what.rstrip('.')}."
    return f"{label}: {'each entry ' if entry else ''}{what}."


def plain_message(text: str) -> str:
    """A message from the library with its command-line flags as plain words: ``--strength`` -> ``strength``."""
    return re.sub(r"--([a-z][a-z0-9-]*)", lambda m: FLAGS.get(m.group(1), m.group(1).replace("-", " ")), text)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


class Forms(NamedTuple):
    read: type
    steer: type
    attribute: type


def request_models(cfg) -> Forms:
    """The pydantic models of the JSON bodies, with the caps of ``cfg`` (a ServerConfig)."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

    class ReadRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str = Field(min_length=1, max_length=cfg.max_text_chars)
        top_k: int = Field(5, ge=1, le=cfg.max_top_k)
        feature: list[int] = Field(default_factory=list, max_length=16)    # also trace these (as `read --feature`)

    class SteerRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: str = Field(min_length=1, max_length=cfg.max_text_chars)
        feature: list[int] | int = Field(default_factory=list)
        strength: list[float] | float = Field(default_factory=list)
        method: Literal["add", "clamp", "scale", "ablate"] = "add"
        algebra: str | None = Field(None, max_length=1000)
        positions: str = "all"
        max_new_tokens: int = Field(32, ge=1, le=cfg.max_new_tokens)
        temperature: float = Field(1.0, ge=0, le=100, allow_inf_nan=False)
        top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
        seed: int | None = Field(0, ge=0, le=2**32 - 1)
        n: int = Field(1, ge=1, le=cfg.max_samples)

        @field_validator("positions")
        @classmethod
        def _positions(cls, v):   # N range-checked before any model work (huge N: 422, not 500)
            try:
                return check_positions(v, "positions")
            except SaescopeError as exc:
                raise ValueError(str(exc)) from None

        @model_validator(mode="after")
        def _interventions(self):
            feats = [self.feature] if isinstance(self.feature, int) else self.feature
            strengths = [self.strength] if isinstance(self.strength, (int, float)) else self.strength
            if not feats and not self.algebra:
                raise ValueError("feature: choose at least one feature to steer")
            if self.method != "ablate":
                if not strengths:
                    raise ValueError(f"strength: give a strength for method {self.method}")
                if len(strengths) not in (1, max(len(feats), 1)):
                    raise ValueError(f"strength: give one strength for all features or one per feature "
                                     f"({_count(len(feats), 'feature')}, {_count(len(strengths), 'strength')})")
            return self

    class AttributeRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str = Field(min_length=1, max_length=cfg.max_text_chars)
        target: str | None = Field(None, max_length=200)
        target_id: int | None = Field(None, ge=0)
        method: Literal["dla", "gradient"] = "dla"
        position: int = Field(-1, ge=-100_000, le=100_000)
        top: int = Field(15, ge=1, le=200)

    return Forms(ReadRequest, SteerRequest, AttributeRequest)
