"""What feature statistics produce: one ``FeatureRecord`` per feature, with its ``Example`` contexts."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .accumulate import StatsConfig


@dataclass
class Example:
    """One context: ``tokens`` (strings), ``ids``, this feature's ``acts`` per token, ``center`` = chosen token."""
    tokens: list[str]
    ids: list[int]
    acts: list[float]
    center: int
    value: float

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "ids": self.ids, "acts": self.acts, "center": self.center, "value": self.value}

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        return cls(list(d["tokens"]), list(d["ids"]), list(d["acts"]), int(d["center"]), float(d["value"]))


@dataclass
class FeatureRecord:
    """Everything known about one feature (a row of the store)."""
    index: int
    density: float                  # fraction of counted tokens where the feature is > 0
    mean: float                     # mean activation over all counted tokens
    mean_active: float              # mean over the tokens where it is > 0
    max: float
    n_active: int
    top: list[Example] = field(default_factory=list)
    intervals: list[dict] = field(default_factory=list)      # [{"lo", "hi", "examples": [Example]}]
    hist: list[int] = field(default_factory=list)            # counts per bin (edges in the store's meta)
    pos_logits: list[tuple[str, float]] = field(default_factory=list)
    neg_logits: list[tuple[str, float]] = field(default_factory=list)
    cofire: list[dict] = field(default_factory=list)         # [{"index", "count", "jaccard"}]
    label: str | None = None

    def to_dict(self) -> dict:
        d = {"index": self.index, "density": self.density, "mean": self.mean, "mean_active": self.mean_active,
             "max": self.max, "n_active": self.n_active, "hist": list(self.hist),
             "cofire": [dict(c) for c in self.cofire], "label": self.label}
        d["top"] = [e.to_dict() for e in self.top]
        d["intervals"] = [{"lo": iv["lo"], "hi": iv["hi"], "examples": [e.to_dict() for e in iv["examples"]]}
                          for iv in self.intervals]
        d["pos_logits"] = [list(x) for x in self.pos_logits]
        d["neg_logits"] = [list(x) for x in self.neg_logits]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureRecord":
        d = dict(d)
        d["top"] = [Example.from_dict(e) for e in d.get("top", [])]
        d["intervals"] = [{"lo": iv["lo"], "hi": iv["hi"], "examples": [Example.from_dict(e) for e in iv["examples"]]}
                          for iv in d.get("intervals", [])]
        d["pos_logits"] = [(s, float(v)) for s, v in d.get("pos_logits", [])]
        d["neg_logits"] = [(s, float(v)) for s, v in d.get("neg_logits", [])]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class FeatureStats:
    """The result of a pass: one record per feature plus what was measured."""
    records: list[FeatureRecord]
    n_tokens: int
    hist_edges: list[float]
    config: StatsConfig
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else float("nan")
