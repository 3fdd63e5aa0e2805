"""JSON round trip shared by the frozen dataclass configs."""
from __future__ import annotations

import dataclasses

from .errors import ConfigError


class JsonConfig:
    """Mixin for frozen dataclasses: ``to_dict`` and a ``from_dict`` that names the first unknown field."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field {unknown[0]!r}")
        return cls(**d)
