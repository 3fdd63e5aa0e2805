"""SAE configuration and metadata: frozen dataclasses with a JSON round trip.

``SAEConfig.to_dict()`` is saescope's own form. The native ``cfg.json`` on disk is SAELens v6's layout
(see ``formats/saelens.py``), which embeds this form under the ``"saescope"`` key.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .._checks import MAX_DIM, checked_float, checked_int
from ..errors import ConfigError

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "gated")
TRANSFORMS = ("none", "center", "layer_norm", "constant_norm_rescale", "scale")
DTYPES = ("float32", "float64", "float16", "bfloat16")


@dataclass(frozen=True)
class SAEMetadata:
    """How an SAE is meant to be used: which model, which hook, which tokenisation. Plain data.

    ``None`` means unknown: readers set only what the file (or a format's documented default) says; the
    layer that attaches an SAE to a model decides what to do with an unknown value."""

    model_name: str | None = None
    hook_name: str | None = None
    hook_head_index: int | None = None
    prepend_bos: bool | None = None
    context_size: int | None = None
    dataset_path: str | None = None
    neuronpedia_id: str | None = None
    hook_name_out: str | None = None        # transcoders: the hook whose activation the decoder predicts
    hook_head_index_out: int | None = None
    release: str | None = None
    sae_id: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("model_name", "hook_name", "hook_name_out", "dataset_path", "neuronpedia_id", "release", "sae_id"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"SAEMetadata.{name}: expected a string or null, got {str(value)[:40]!r}")
        for name in ("hook_head_index", "hook_head_index_out", "context_size"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, checked_int(value, f"SAEMetadata.{name}", lo=0, hi=MAX_DIM,
                                                           error=ConfigError))
        if self.prepend_bos is not None and not isinstance(self.prepend_bos, bool):
            raise ConfigError(f"SAEMetadata.prepend_bos: expected true, false or null, got {str(self.prepend_bos)[:40]!r}")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"SAEMetadata.extra: expected a JSON object, got {type(self.extra).__name__}")

    def __hash__(self) -> int:  # ``extra`` is a dict: hash its JSON form
        fields = tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra")
        return hash((fields, json.dumps(self.extra, sort_keys=True, default=str)))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "SAEMetadata":
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        extra = dict(d.pop("extra", None) or {})
        known = {k: v for k, v in d.items() if k in names}
        extra.update({k: v for k, v in d.items() if k not in names})  # unknown keys are kept, not dropped
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class SAEConfig:
    """Shape, activation and input handling of an SAE.

    architecture: ``relu`` (SAELens "standard"), ``topk``, ``batchtopk``, ``jumprelu`` or ``gated``.
    k: active latents per token for ``topk`` (and the training target of ``batchtopk``).
    apply_b_dec_to_input: encode sees ``x - b_dec``.
    input_transform: applied to the raw activation before the encoder and undone after the decoder
    (``saescope.sae.transforms``). input_scale: the factor of the ``scale`` transform.
    d_out: ``None`` for an SAE (the decoder reconstructs its input, width ``d_in``); an int for a
    **transcoder**, whose decoder predicts another activation (``metadata.hook_name_out``) of width ``d_out``.
    Transcoders take input transform ``none`` and no ``apply_b_dec_to_input`` (``b_dec`` lives in the output
    space). skip: a transcoder with a linear skip path ``W_skip [d_out, d_in]`` (SAELens layout).
    matryoshka_widths: nested prefixes ``w_1 < ... < w_n = d_sae`` a Matryoshka SAE was trained with (each
    prefix of the latents is a usable dictionary on its own); inference is unchanged.
    """

    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    apply_b_dec_to_input: bool = False
    input_transform: str = "none"
    input_scale: float = 1.0
    dtype: str = "float32"
    d_out: int | None = None
    skip: bool = False
    matryoshka_widths: tuple[int, ...] | None = None
    metadata: SAEMetadata = field(default_factory=SAEMetadata)

    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None

    @property
    def out_width(self) -> int:
        """Width of the decoder's output: ``d_out`` for a transcoder, else ``d_in``."""
        return self.d_in if self.d_out is None else self.d_out

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"SAEConfig.architecture: unknown value {self.architecture!r} (expected one of {', '.join(ARCHITECTURES)})")
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int):
                raise ConfigError(f"SAEConfig.{name}: must be a positive integer, got {value!r}")
            checked_int(value, f"SAEConfig.{name}", lo=1, hi=MAX_DIM, error=ConfigError)
        if self.k is not None:
            if not isinstance(self.k, int):
                raise ConfigError(f"SAEConfig.k: must be an integer, got {self.k!r}")
            checked_int(self.k, "SAEConfig.k", lo=1, hi=self.d_sae, error=ConfigError)
        if self.architecture == "topk" and self.k is None:
            raise ConfigError(f"SAEConfig.k: a topk SAE needs 0 < k <= d_sae ({self.d_sae}), got None")
        if self.input_transform not in TRANSFORMS:
            raise ConfigError(f"SAEConfig.input_transform: unknown value {self.input_transform!r} (expected one of {', '.join(TRANSFORMS)})")
        scale = checked_float(self.input_scale, "SAEConfig.input_scale", error=ConfigError)
        if scale == 0 or not 1e-30 < abs(scale) < 1e30:
            raise ConfigError(f"SAEConfig.input_scale: must be a finite non-zero number within 1e+/-30, got {scale!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"SAEConfig.dtype: unknown value {self.dtype!r} (expected one of {', '.join(DTYPES)})")
        if not isinstance(self.metadata, SAEMetadata):
            object.__setattr__(self, "metadata", SAEMetadata.from_dict(self.metadata))
        self._check_transcoder()
        self._check_matryoshka()

    def _check_transcoder(self) -> None:
        if self.d_out is None:
            if self.skip:
                raise ConfigError("SAEConfig.skip: a skip path needs a transcoder (set d_out)")
            return
        if not isinstance(self.d_out, int):
            raise ConfigError(f"SAEConfig.d_out: must be a positive integer or null, got {self.d_out!r}")
        checked_int(self.d_out, "SAEConfig.d_out", lo=1, hi=MAX_DIM, error=ConfigError)
        if self.input_transform != "none":
            raise ConfigError(f"SAEConfig.input_transform: a transcoder takes 'none' (fold any scaling into its "
                              f"weights), got {self.input_transform!r}")
        if self.apply_b_dec_to_input:
            raise ConfigError("SAEConfig.apply_b_dec_to_input: not possible for a transcoder (b_dec is in the "
                              "output space)")
        if not isinstance(self.skip, bool):
            raise ConfigError(f"SAEConfig.skip: must be true or false, got {self.skip!r}")

    def _check_matryoshka(self) -> None:
        widths = self.matryoshka_widths
        if widths is None:
            return
        if isinstance(widths, list):
            widths = tuple(widths)
            object.__setattr__(self, "matryoshka_widths", widths)
        ok = isinstance(widths, tuple) and 0 < len(widths) <= 64 and all(isinstance(w, int) and not isinstance(w, bool) for w in widths)
        if not ok or any(a >= b for a, b in zip(widths, widths[1:])) or widths[0] <= 0 or widths[-1] != self.d_sae:
            raise ConfigError(f"SAEConfig.matryoshka_widths: need strictly increasing positive widths ending at "
                              f"d_sae={self.d_sae}, got {self.matryoshka_widths!r}")

    def replace(self, **changes: Any) -> "SAEConfig":
        """A copy with some fields changed (``metadata`` may be given as a dict of metadata fields to change)."""
        meta = changes.get("metadata")
        if isinstance(meta, dict):
            changes["metadata"] = dataclasses.replace(self.metadata, **meta)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["metadata"] = self.metadata.to_dict()
        if self.matryoshka_widths is not None:
            d["matryoshka_widths"] = list(self.matryoshka_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SAEConfig":
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"SAEConfig: unknown field(s) {', '.join(unknown)}")
        for required in ("architecture", "d_in", "d_sae"):
            if required not in d:
                raise ConfigError(f"SAEConfig: missing field {required!r}")
        d["metadata"] = SAEMetadata.from_dict(d.get("metadata"))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SAEConfig":
        return cls.from_dict(json.loads(text))
