"""Steering: edit SAE features (or add decoder directions) at the SAE's hook while the model runs or generates.

Methods (``Intervention.method``), applied to the raw hook activation ``x [..., d_in]``:

============ ==========================================================================================
``add``      ``x += strength * d_f`` for each feature f, where ``d_f = sae.feature_directions(f)`` is the
             decoder row mapped to raw activation space. It is **not** unit-normalised by default, so
             ``add`` with strength s moves x exactly as raising the feature's activation by s would
             (``normalize=True`` uses ``d_f / |d_f|``: strength is then a residual-norm distance).
``algebra``  ``x += strength * sum_i w_i d_i``: one direction from weighted features ("12-7", "+3*12 -1*7").
``clamp``    set feature f to ``strength`` inside the SAE, keeping the SAE error term:
             ``x' = x + decode(f', s) - decode(f, s)`` with ``(f, s) = sae.encode_with_state(x)``.
``scale``    like clamp with ``f'_f = strength * f_f``.
``ablate``   clamp to 0 (error term kept): ``x' = x - f_f * d_f``.
============ ==========================================================================================

Positions (``Intervention.positions``): ``"all"``, ``"prompt"`` (prompt tokens only), ``"generated"`` (tokens
produced by ``generate``), ``"from:N"`` (absolute positions >= N, BOS is position 0) and ``"at:N"``.
Interventions compose: all clamp/scale/ablate edits share one encode, then the additive ones are added.
Because the edit is a hook on ``LanguageModel.intervene``, it applies to every KV-cached generation step.

With a **transcoder**, the features are read at its input hook and every change is made where its decoder
writes, at its output hook (``hook_name_out``, e.g. ``hook_mlp_out``): ``y' = y + decode(f') - decode(f)``, the
transcoder's error kept, and ``add`` adds the decoder direction (in the output space) there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
from dataclasses import asdict, dataclass

import torch

from .. import display
from .._checks import check_positions
from ..errors import InputError
from ..sae import SparseCode
from ..site import attach, check_feature

log = logging.getLogger(__name__)

METHODS = ("add", "clamp", "scale", "ablate", "algebra")
ENCODED_METHODS = ("clamp", "scale", "ablate")
MAX_NEW_TOKENS = 1024
MAX_STRENGTH = 1e6
_TERM_RE = re.compile(r"\s*([+-])?\s*(?:(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)\s*\*\s*)?(\d+)\s*")


@dataclass(frozen=True)
class Intervention:
    """One edit at the SAE's hook. ``strength``: add/algebra multiplier, clamp value, scale factor (ablate:
    ignored). For clamp it may be one value per feature. ``weights``: algebra, one per feature."""
    features: tuple[int, ...]
    method: str = "add"
    strength: float | tuple[float, ...] = 1.0
    positions: str = "all"
    weights: tuple[float, ...] | None = None
    normalize: bool = False

    def __post_init__(self):
        feats = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        object.__setattr__(self, "features", feats)
        if not feats:
            raise InputError("an intervention needs at least one feature")
        if self.method not in METHODS:
            raise InputError(f"unknown steering method {self.method!r}; choose one of {', '.join(METHODS)}")
        strength = self.strength
        if isinstance(strength, (list, tuple)):
            strength = tuple(float(s) for s in strength)
            if self.method != "clamp" or len(strength) != len(feats):
                raise InputError(f"a list of strengths needs method clamp and one value per feature ({len(feats)})")
        else:
            strength = float(strength)
        object.__setattr__(self, "strength", strength)
        for s in (strength if isinstance(strength, tuple) else (strength,)):
            if not math.isfinite(s):
                raise InputError(f"strength must be a finite number, got {s}")
            if abs(s) > MAX_STRENGTH:
                raise InputError(f"strength {s:g} is absurd (|strength| > {MAX_STRENGTH:g}); use a smaller value")
        check_positions(self.positions)
        if self.weights is not None:
            w = tuple(float(x) for x in self.weights)
            if len(w) != len(feats) or not all(math.isfinite(x) for x in w):
                raise InputError(f"algebra weights must be {len(feats)} finite numbers, got {self.weights!r}")
            object.__setattr__(self, "weights", w)

    @classmethod
    def algebra(cls, expr: str | list, strength: float = 1.0, positions: str = "all",
                normalize: bool = False) -> "Intervention":
        """A weighted sum of feature directions: ``"12-7"``, ``"+3*12 -1*7"``, or ``[(12, 1.0), (7, -1.0)]``."""
        pairs = parse_algebra(expr) if isinstance(expr, str) else [(int(f), float(w)) for f, w in expr]
        if not pairs:
            raise InputError(f"feature algebra {expr!r} names no feature")
        return cls(tuple(f for f, _ in pairs), "algebra", strength, positions, tuple(w for _, w in pairs), normalize)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["features"] = list(self.features)
        return d


def parse_algebra(expr: str) -> list[tuple[int, float]]:
    """``"12-7"`` -> [(12, 1.0), (7, -1.0)]; ``"+3*12 -0.5*7"`` -> [(12, 3.0), (7, -0.5)]."""
    pairs, pos = [], 0
    text = expr.strip()
    while pos < len(text):
        m = _TERM_RE.match(text, pos)
        if not m or m.end() == pos or (pairs and not m.group(1)):
            raise InputError(f"cannot parse feature algebra {expr!r} at {text[pos:]!r}; write e.g. '12-7' or '+3*12 -1*7'")
        sign = -1.0 if m.group(1) == "-" else 1.0
        weight = float(m.group(2)) if m.group(2) else 1.0
        pairs.append((int(m.group(3)), sign * weight))
        pos = m.end()
    if not pairs:
        raise InputError(f"feature algebra {expr!r} names no feature")
    return pairs


def build_interventions(features=(), strengths=(), method: str = "add", positions: str = "all",
                        algebra: str | None = None) -> list[Intervention]:
    """Interventions from command-line-style options (used by ``saescope steer``/``ablate`` and the server).

    One Intervention per feature; ``strengths`` holds one value for all features or one per feature (ignored,
    and not required, for ablate). ``algebra`` ("12-7") adds one combined direction with ``strengths[0]``.
    """
    features, strengths = list(features or []), list(strengths or [])
    if method != "ablate":
        if not strengths:
            raise InputError(f"--strength is required with --method {method}")
        if len(strengths) not in (1, max(len(features), 1)):
            raise InputError(f"give one --strength, or one per --feature ({len(features)}); got {len(strengths)}")
    ivs = []
    for j, f in enumerate(features):
        s = 0.0 if method == "ablate" else strengths[j if len(strengths) > 1 else 0]
        ivs.append(Intervention((f,), method, s, positions))
    if algebra:
        ivs.append(Intervention.algebra(algebra, strengths[0] if strengths else 1.0, positions))
    if not ivs:
        raise InputError("give at least one --feature" + (" or --algebra" if method != "ablate" else ""))
    return ivs


def position_mask(spec: str, ctx, shape: tuple[int, int], device) -> torch.Tensor:
    """BoolTensor ``[b, pos]``: where an intervention with positions ``spec`` applies, from the HookContext."""
    if spec == "all":
        return torch.ones(shape, dtype=torch.bool, device=device)
    positions = ctx.positions.to(device) if ctx is not None and ctx.positions is not None else \
        torch.arange(shape[1], device=device).expand(shape)
    prompt_lengths = getattr(ctx, "prompt_lengths", None)
    if spec in ("prompt", "generated"):
        if prompt_lengths is None:   # a plain forward: every token is a prompt token
            return torch.full(shape, spec == "prompt", dtype=torch.bool, device=device)
        is_gen = positions >= prompt_lengths.to(device)[:, None]
        return is_gen if spec == "generated" else ~is_gen
    kind, n = spec.split(":")
    return positions >= int(n) if kind == "from" else positions == int(n)


class SteeringHook:
    """The edits of ``interventions`` for ``LanguageModel.intervene``: ``hook.edits()`` -> ``{hook name: fn}``.

    Takes any leading shape ``[b, pos, ...]`` (``pos`` is 1 on KV-cached steps). ``records`` (when
    ``record=True``) keeps ``(ctx.step, positions, delta [b, pos, width])`` per call, for inspection/tests.
    """

    def __init__(self, att, interventions, record: bool = False):
        self.att = att
        self.sae = sae = att.sae
        self.site = att.site
        self.interventions = list(interventions)
        self.records: list | None = [] if record else None
        self._directions = {}
        self._edited = sorted({f for iv in self.interventions if iv.method in ENCODED_METHODS for f in iv.features})
        self._code = None          # transcoder: (f, state) read at the input hook, used at the output hook
        for iv in self.interventions:
            for f in iv.features:
                check_feature(sae, f)
            if iv.method in ("add", "algebra"):
                with torch.no_grad():
                    d = sae.feature_directions(torch.tensor(iv.features, device=sae.device)).float()
                    if iv.normalize:
                        d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                    w = torch.tensor(iv.weights if iv.weights else [1.0] * len(iv.features), device=d.device)
                    self._directions[id(iv)] = iv.strength * (w[:, None] * d).sum(0)   # [d_out]

    def edits(self) -> dict:
        """``{hook: fn}``: one hook for an SAE; the input and output hooks for a transcoder."""
        if self.site.out is None:
            return {self.site.hook: self}
        return {self.site.hook: self._read_input, self.site.hook_out: self}

    def _decode_difference(self, f: torch.Tensor, f_new: torch.Tensor, state) -> torch.Tensor:
        """``decode(f_new, state) - decode(f, state)``: ``[..., d_sae] -> [..., d_out]``. Decoding is affine in the
        features, so only the edited ones matter: a sparse decode over them (k rows of W_dec, not d_sae)."""
        idx = self._edited
        if len(idx) * 4 < self.sae.d_sae:
            i = torch.tensor(idx, device=f.device).expand(*f.shape[:-1], len(idx))
            return (self.sae.decode_sparse(SparseCode(f_new[..., idx] - f[..., idx], i, state))
                    - self.sae.decode_sparse(SparseCode(torch.zeros_like(f[..., idx]), i, state)))
        return self.sae.decode(f_new, state) - self.sae.decode(f, state)

    def _encode(self, act: torch.Tensor):
        return self.sae.encode_with_state(self.site.to_sae(act).to(device=self.sae.device, dtype=self.sae.dtype))

    def _read_input(self, act: torch.Tensor, ctx=None) -> None:
        """Transcoder input hook: encode once (when an edit needs the features); the activation is unchanged."""
        self._code = self._encode(act) if self._edited else None
        return None

    def _delta(self, f_state, shape: tuple, masks, device) -> torch.Tensor:
        delta = torch.zeros(shape, dtype=torch.float32, device=device)
        edits = [(iv, m) for iv, m in zip(self.interventions, masks) if iv.method in ENCODED_METHODS and m.any()]
        if edits:
            f, state = f_state
            f_new = f.clone()
            for iv, m in edits:
                idx = torch.tensor(iv.features, device=f.device)
                cur = f_new[..., idx]
                if iv.method == "clamp":
                    new = torch.as_tensor(iv.strength, dtype=f.dtype, device=f.device).expand_as(cur)
                elif iv.method == "scale":
                    new = cur * iv.strength
                else:
                    new = torch.zeros_like(cur)
                f_new[..., idx] = torch.where(m.to(f.device)[..., None], new, cur)
            delta += self._decode_difference(f, f_new, state).to(device, torch.float32)
        for iv, m in zip(self.interventions, masks):
            if iv.method in ("add", "algebra") and m.any():
                delta += m[..., None].float() * self._directions[id(iv)].to(device)
        return delta

    def __call__(self, act: torch.Tensor, ctx=None) -> torch.Tensor:
        with torch.no_grad():
            port = self.site.write_port
            y = port.to_sae(act)
            b, p, dev = y.shape[0], y.shape[1], y.device
            masks = [position_mask(iv.positions, ctx, (b, p), dev) for iv in self.interventions]
            needs_code = any(iv.method in ENCODED_METHODS and m.any() for iv, m in zip(self.interventions, masks))
            code = (self._code if self.site.out is not None else self._encode(act)) if needs_code else None
            delta = self._delta(code, y.shape, masks, dev)
            if self.records is not None:
                pos = ctx.positions.clone() if ctx is not None and ctx.positions is not None else None
                self.records.append((getattr(ctx, "step", 0), pos, delta.clone()))
            change = port.delta_from_sae(delta, act.float() if act.dtype != torch.float32 else act)
            return (act.float() + change).to(act.dtype) if act.dtype != torch.float32 else act + change


def _as_interventions(interventions) -> list[Intervention]:
    if isinstance(interventions, Intervention):
        return [interventions]
    out = list(interventions)
    if not out:
        raise InputError("no interventions given; pass at least one Intervention")
    for iv in out:
        if not isinstance(iv, Intervention):
            raise InputError(f"expected an Intervention, got {type(iv).__name__}")
    return out


@contextlib.contextmanager
def steer(lm, sae, interventions, record: bool = False):
    """Context manager: every forward and generation step of ``lm`` inside the block is steered.

        with steer(lm, sae, Intervention(123, "add", 8.0)):
            logits = lm("The cat")

    Yields the SteeringHook (``.records`` when ``record=True``).
    """
    hook = SteeringHook(attach(lm, sae), _as_interventions(interventions), record=record)
    with lm.intervene(hook.edits()):
        yield hook


@dataclass
class SteerResult:
    prompt: str
    baseline: str                # continuation without intervention
    steered: str                 # continuation with the interventions, same seed
    interventions: list[Intervention]
    hook: str
    seed: int | None
    temperature: float
    top_p: float
    max_new_tokens: int
    baseline_ids: list[int]
    steered_ids: list[int]

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "baseline": self.baseline, "steered": self.steered, "hook": self.hook,
                "interventions": [iv.to_dict() for iv in self.interventions], "seed": self.seed,
                "temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
                "baseline_ids": self.baseline_ids, "steered_ids": self.steered_ids}

    def _repr_html_(self) -> str:
        return display.render_steer(self)


def check_generation_args(max_new_tokens, temperature, top_p, seed) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InputError(f"max_new_tokens must be an integer between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or not 0 <= temperature <= 100:
        raise InputError(f"temperature must be a finite number between 0 and 100, got {temperature!r}")
    if not isinstance(top_p, (int, float)) or not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")


def generate_steered(lm, sae, prompt: str, interventions, max_new_tokens: int = 32, temperature: float = 1.0,
                     top_p: float = 1.0, seed: int | None = 0, prepend_bos: bool | None = None,
                     include_baseline: bool = True) -> SteerResult:
    """Generate a continuation of ``prompt`` without and with ``interventions``, from the same seed.

    ``temperature == 0`` is greedy. The prompt is tokenized with the SAE's ``prepend_bos`` (unless given), so
    positions match the SAE's training; prompt + ``max_new_tokens`` must fit the context.
    """
    att = attach(lm, sae)
    if prepend_bos is not None:
        att = dataclasses.replace(att, prepend_bos=bool(prepend_bos))
    check_generation_args(max_new_tokens, temperature, top_p, seed)
    interventions = _as_interventions(interventions)
    if seed is None and temperature > 0:   # baseline and steered must share the seed: pick one and report it
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    ids = att.tokens(prompt, reserve=max_new_tokens, truncate=False, what="prompt")
    n = ids.shape[1]
    kw = dict(max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=float(temperature) if temperature > 0 else 1.0,
              top_p=float(top_p), seed=seed, prepend_bos=False)
    ids = ids.to(lm.device)
    hook = SteeringHook(att, interventions)          # validates every feature before any generation
    base_ids = lm.generate(ids, **kw)[0, n:].tolist() if include_baseline else []
    with lm.intervene(hook.edits()):
        steer_ids = lm.generate(ids, **kw)[0, n:].tolist()
    return SteerResult(prompt, lm.to_string(torch.tensor(base_ids, dtype=torch.long)) if include_baseline else "",
                       lm.to_string(torch.tensor(steer_ids, dtype=torch.long)), interventions, att.hook_out, seed,
                       float(temperature), float(top_p), max_new_tokens, base_ids, steer_ids)
