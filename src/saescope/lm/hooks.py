"""Hook points as PyTorch hooks (mixed into LanguageModel): pass state, interventions, capture and early exit.

Hooks are plain PyTorch forward (pre-)hooks on the HF modules (``hookpoints.py`` says where each name lives),
registered only for the duration of one call, so an unhooked model runs at HF speed.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..errors import HookError, InputError
from .hookpoints import BLOCK0_INPUT, EMBED, LN_FINAL, HookPoint, submodule
from .norms import NormFacts, affine, norm_facts, normalize


@dataclass(frozen=True)
class HookContext:
    """What an intervention function may want to know besides the activation.

    hook:           the hook name.
    positions:      LongTensor [b, pos], absolute position of each token of the activation in its sequence
                    (padding excluded from the count; padding tokens themselves are -1).
    prompt_lengths: LongTensor [b] during ``generate`` (positions >= prompt_length are generated tokens), else None.
    step:           0 for the prompt pass, n for the pass that processes the n-th generated token.
    """

    hook: str
    positions: torch.Tensor
    prompt_lengths: torch.Tensor | None
    step: int


class _StopForward(Exception):
    """Raised from a hook once the deepest captured activation is in hand (early exit)."""


class _Pass:
    """Mutable state of the forward pass in progress, read by the installed hooks."""

    def __init__(self, captures: dict | None, stop_at: HookPoint | None, positions, prompt_lengths=None,
                 step: int = 0, grad: bool = False):
        self.captures = captures
        self.stop_at = stop_at
        self.positions = positions
        self.prompt_lengths = prompt_lengths
        self.step = step
        self.grad = grad
        self.resid_pre: dict[int, torch.Tensor] = {}


def _wants_context(fn: Callable, hook: str) -> bool:
    """True when ``fn`` takes the HookContext: it has a parameter named ``ctx`` or ``**kwargs``.

    The one documented signature is ``fn(act)`` or ``fn(act, *, ctx)``; a function that cannot be called as
    ``fn(act)`` / ``fn(act, ctx=...)`` is refused here, before any forward pass, with a one-line InputError.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):      # builtins and the like: called as fn(act)
        return False
    params = sig.parameters
    ctx = params.get("ctx")
    if ctx is not None and ctx.kind == ctx.POSITIONAL_ONLY:
        raise InputError(f"intervention for {hook}: its ctx parameter is positional-only; declare it as "
                         "fn(act, *, ctx) so saescope can pass the context by keyword")
    wants = (ctx is not None and ctx.kind != ctx.VAR_POSITIONAL) or \
        any(p.kind == p.VAR_KEYWORD for p in params.values())
    try:
        sig.bind(None, **({"ctx": None} if wants else {}))
    except TypeError:
        raise InputError(f"intervention for {hook} has signature {sig}; it must be callable as fn(act) or "
                         "fn(act, *, ctx) (other parameters need defaults)") from None
    return wants


class HooksMixin:
    """Hook installation and interventions of LanguageModel; needs ``hf_model``, ``family``, ``info``, ``name``,
    ``_layers``, ``_edits``, ``_pass``, ``_facts_cache`` and ``_hook(name) -> HookPoint``."""

    def _apply(self, hp: HookPoint, act: torch.Tensor) -> torch.Tensor:
        """Run the active edits at ``hp`` in order, capture, and stop the pass if this was the deepest capture."""
        state = self._pass
        for edit_hp, fn, wants_ctx in self._edits:
            if edit_hp.name != hp.name:
                continue
            if wants_ctx:
                ctx = HookContext(hp.name, state.positions, state.prompt_lengths, state.step)
                out = fn(act, ctx=ctx)
            else:
                out = fn(act)
            if out is not None:
                if not isinstance(out, torch.Tensor) or out.shape != act.shape:
                    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise HookError(f"intervention at {hp.name} returned {got}; it must return a tensor of "
                                    f"shape {list(act.shape)}")
                act = out.to(act.dtype)
        if state.captures is not None and hp.name in state.captures:
            state.captures[hp.name] = act if state.grad else act.detach()
        if state.stop_at is not None and hp.name == state.stop_at.name:
            raise _StopForward
        return act

    def _install(self, points: list[HookPoint], handles: list) -> list:
        """Register the PyTorch hooks serving ``points`` into ``handles`` (kept by the caller, so that a failure
        half-way still removes what was registered); returns ``handles``."""
        by_layer: dict[int, dict[str, HookPoint]] = {}
        embed = None
        for hp in points:
            if hp.kind == EMBED:
                embed = hp
            elif hp.kind == LN_FINAL:
                norm = self.hf_model.get_submodule(self.family.final_norm)
                handles.append(norm.register_forward_hook(self._norm_hook(hp, norm), with_kwargs=True))
            else:
                by_layer.setdefault(hp.layer, {})[hp.kind] = hp
        if embed is not None and self.family.embed != BLOCK0_INPUT:
            module = self.hf_model.get_submodule(self._site(embed, self.family.embed))
            handles.append(module.register_forward_hook(self._output_hook(embed)))
        elif embed is not None:
            by_layer.setdefault(0, {})[EMBED] = embed
        for layer, kinds in by_layer.items():
            self._install_block(layer, kinds, handles)
        return handles

    def _site(self, hp: HookPoint, path: str | None) -> str:
        if path is None:
            raise HookError(f"hook {hp.name} is not mapped for the {self.family.name} family of model {self.name} "
                            "(add it to its Family in saescope/lm/hookpoints.py)")
        return path

    def _norm_facts_of(self, hp: HookPoint, module: torch.nn.Module) -> NormFacts:
        facts = self._facts_cache.get(id(module))
        if facts is None:
            facts = norm_facts(module, self.info.d_model, self.hf_model.config)
            if facts is None:
                raise HookError(f"hook {hp.name}: the norm module {type(module).__name__} of model {self.name} "
                                "follows no known LayerNorm/RMSNorm convention")
            self._facts_cache[id(module)] = facts
        return facts

    def _norm_hook(self, hp: HookPoint, module: torch.nn.Module):
        """x̂ of a norm (before weight and bias); an edited x̂' makes the module output x̂' * (w + offset) + b."""
        facts = self._norm_facts_of(hp, module)

        def hook(mod, args, kwargs, output):
            x = args[0] if args else next(iter(kwargs.values()))
            c, inv = normalize(x, facts)
            xhat = (c * (inv.detach() if self._linear else inv)).to(x.dtype)   # frozen scale while linearized
            new = self._apply(hp, xhat)
            if new is xhat:
                return None
            return affine(new.float() if new.dtype != torch.float64 else new, mod, facts).to(output.dtype)

        return hook

    def _install_block(self, layer: int, kinds: dict[str, HookPoint], handles: list) -> None:
        fam, block = self.family, self._layers[layer]
        pre, mid, embed = kinds.get("hook_resid_pre"), kinds.get("hook_resid_mid"), kinds.get(EMBED)
        if pre or mid or embed:
            handles.append(block.register_forward_pre_hook(
                self._block_pre_hook(layer, pre, mid is not None, embed), with_kwargs=True))
        for kind, path in (("ln1.hook_normalized", fam.ln1), ("ln2.hook_normalized", fam.ln2)):
            if kind in kinds:
                norm = block.get_submodule(self._site(kinds[kind], path))
                handles.append(norm.register_forward_hook(self._norm_hook(kinds[kind], norm), with_kwargs=True))
        if "attn.hook_z" in kinds:
            handles.append(submodule(block, fam.attn_o_proj).register_forward_pre_hook(
                self._z_hook(kinds["attn.hook_z"])))
        if "hook_attn_out" in kinds or mid:
            handles.append(submodule(block, fam.attn_out).register_forward_hook(
                self._attn_out_hook(layer, kinds.get("hook_attn_out"), mid)))
        if "mlp.hook_post" in kinds:
            handles.append(submodule(block, fam.mlp_down).register_forward_pre_hook(
                self._input_hook(kinds["mlp.hook_post"])))
        if "hook_mlp_out" in kinds:
            handles.append(submodule(block, fam.mlp_out).register_forward_hook(
                self._output_hook(kinds["hook_mlp_out"])))
        if "hook_resid_post" in kinds:
            handles.append(block.register_forward_hook(self._output_hook(kinds["hook_resid_post"])))

    def _block_pre_hook(self, layer: int, pre: HookPoint | None, keep_resid: bool, embed: HookPoint | None = None):
        def hook(module, args, kwargs):
            in_args = bool(args)
            x = args[0] if in_args else kwargs["hidden_states"]
            new = self._apply(embed, x) if embed is not None else x
            new = self._apply(pre, new) if pre is not None else new
            if keep_resid:
                self._pass.resid_pre[layer] = new
            if new is x:
                return None
            if in_args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return hook

    def _z_hook(self, hp: HookPoint):
        n_heads = self.info.n_heads

        def hook(module, args):
            x = args[0]
            z = x.view(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)
            new = self._apply(hp, z)
            if new is z:
                return None
            return (new.reshape(x.shape), *args[1:])

        return hook

    def _input_hook(self, hp: HookPoint):
        def hook(module, args):
            new = self._apply(hp, args[0])
            return None if new is args[0] else (new, *args[1:])

        return hook

    def _output_hook(self, hp: HookPoint):
        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            new = self._apply(hp, x)
            if new is x:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def _attn_out_hook(self, layer: int, attn: HookPoint | None, mid: HookPoint | None):
        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            new = self._apply(attn, x) if attn is not None else x
            if mid is not None:
                resid_pre = self._pass.resid_pre.pop(layer)
                resid_mid = resid_pre + new          # the very sum the block computes next
                edited = self._apply(mid, resid_mid)
                if edited is not resid_mid:      # make the block's own sum equal the edited value
                    new = edited - resid_pre
            if new is x:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    @contextmanager
    def _hooked(self, state: _Pass, extra: list[HookPoint] = ()) -> Iterator[None]:
        points = {hp.name: hp for hp, _, _ in self._edits}
        points.update({hp.name: hp for hp in extra})
        prev, handles = self._pass, []
        self._pass = state
        try:
            handles = self._install(list(points.values()), handles)
            yield
        finally:
            for h in handles:
                h.remove()
            self._pass = prev

    @contextmanager
    def intervene(self, edits: dict[str, Callable]) -> Iterator[None]:
        """Apply ``{hook: fn}`` to every forward pass inside the block (``lm(...)``, ``run``, ``generate``).

        ``fn(act) -> act | None`` or ``fn(act, *, ctx) -> act | None``: the HookContext is passed as the keyword
        ``ctx=`` exactly when ``fn`` has a parameter named ``ctx`` (or ``**kwargs``); any other parameter needs a
        default and is never filled (``def f(act, alpha=1.0)`` gets ``alpha=1.0``). Returning None
        keeps the (possibly in-place edited) ``act``. The returned tensor is what flows on through the model.
        Nested blocks and several functions at one hook compose in the order they were entered/listed.
        During ``generate`` each KV-cached step shows ``fn`` only the new position (pos = 1);
        ``ctx.positions`` / ``ctx.prompt_lengths`` tell prompt from generated tokens.
        """
        if not isinstance(edits, dict):
            raise InputError(f"intervene() takes a dict {{hook name: function}}, got {type(edits).__name__}")
        added = []
        for name, fn in edits.items():
            hp = self._hook(name)
            if not callable(fn):
                raise InputError(f"intervention for {name} is not callable: {fn!r}")
            added.append((hp, fn, _wants_context(fn, name)))
        self._edits.extend(added)
        try:
            yield
        finally:
            for item in added:
                for i in range(len(self._edits) - 1, -1, -1):
                    if self._edits[i] is item:
                        del self._edits[i]
                        break
