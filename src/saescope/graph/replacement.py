"""The local replacement model: every MLP replaced by its per-layer transcoder, plus an error node per (layer, position).

For a prompt, ``ReplacementModel.setup`` runs the original model once and reads, per layer L and position p,

    x = MLP input (the transcoder's input hook, e.g. ``blocks.L.ln2.hook_normalized``)
    y = MLP output (its output hook, ``blocks.L.hook_mlp_out``)
    a = transcoder features of x                      (zero at the first ``zero_positions`` positions)
    y = sum_f a_f W_dec[f] + b_dec + x W_skip^T + e   (e: the error node, defined by this equation)

At the first ``zero_positions`` positions (the BOS attention sink, as circuit-tracer does) features and errors are
zero and the whole MLP output is a constant. With attention patterns and norm scales frozen (``lm.linearized()``)
and each MLP output a constant (plus its linear skip path), every feature pre-activation and every logit is an
affine function of the node values: feature vectors ``a_f W_dec[f]``, error vectors ``e`` and token embeddings.

``ReplacementModel.check_exact`` rebuilds every MLP output from the transcoder and the error nodes inside a fresh
forward pass and returns the largest logit difference to the original model (it must be ~1e-6, below 1e-4).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import ConfigError, InputError
from ..site import attach, check_finite

SUPPORTED = ("relu", "jumprelu", "topk", "batchtopk")


@dataclass
class Setup:
    """What one run of the original model gives for a prompt (tensors on the model's device, float32).

    ``features [n, 3]`` (layer, pos, feature) sorted; ``activations [n]``; ``encoder [n, d_in]`` (W_enc columns,
    for gradients injected at the input hook); ``decoder [n, d_out]`` (a_f W_dec[f]); ``errors [L, pos, d_out]``;
    ``embeds [pos, d_model]``; ``constants [L, pos, d_out]`` (b_dec, or the whole output at zeroed positions);
    ``pre [n]`` feature pre-activations; ``b_enc [n]``; ``logits [pos, vocab]``; ``errors64``: the errors in float64
    (so that reconstruction + error gives the MLP output back to the last bit in ``check_exact``)."""
    ids: torch.Tensor
    features: torch.Tensor
    activations: torch.Tensor
    pre: torch.Tensor
    b_enc: torch.Tensor
    encoder: torch.Tensor
    decoder: torch.Tensor
    errors: torch.Tensor
    embeds: torch.Tensor
    constants: torch.Tensor
    logits: torch.Tensor
    errors64: torch.Tensor

    @property
    def n_pos(self) -> int:
        return int(self.ids.shape[-1])


class ReplacementModel:
    """``lm`` with one transcoder per layer (``transcoders``: any order, one per MLP, bound by ``site.attach``).

    ``zero_positions``: how many leading positions carry no feature or error node (1: the BOS position)."""

    def __init__(self, lm, transcoders, zero_positions: int = 1):
        self.lm = lm
        n_layers = lm.info.n_layers
        atts = {}
        for sae in transcoders:
            att = attach(lm, sae)
            if not att.is_transcoder:
                raise InputError(f"{describe(sae)} is an SAE, not a transcoder: an attribution graph needs one "
                                 "transcoder per MLP (input ln2.hook_normalized, output hook_mlp_out)")
            layer = lm.hook_layer(att.hook_out)
            if att.hook_out != f"blocks.{layer}.hook_mlp_out":
                raise InputError(f"{describe(sae)} writes to {att.hook_out}; attribution graphs replace MLPs, so each "
                                 f"transcoder must write to blocks.L.hook_mlp_out")
            if lm.hook_layer(att.hook) != layer:
                raise InputError(f"{describe(sae)} reads {att.hook} but writes {att.hook_out}: not one MLP")
            cfg = sae.cfg
            if cfg.architecture not in SUPPORTED:
                raise InputError(f"{describe(sae)}: architecture {cfg.architecture!r} is not supported in attribution "
                                 f"graphs (supported: {', '.join(SUPPORTED)})")
            if cfg.input_transform != "none" or cfg.apply_b_dec_to_input:
                raise InputError(f"{describe(sae)}: input transform {cfg.input_transform!r} / apply_b_dec_to_input "
                                 "makes its pre-activation non-linear in the input; fold it first")
            if att.site.port.head is not None or att.site.port.shift is not None or att.site.write_port.head is not None:
                raise InputError(f"{describe(sae)}: head-indexed or shifted hooks are not supported in graphs")
            if layer in atts:
                raise InputError(f"two transcoders for layer {layer} ({describe(atts[layer].sae)} and {describe(sae)})")
            atts[layer] = att
        missing = [L for L in range(n_layers) if L not in atts]
        if missing:
            raise InputError(f"no transcoder for layer(s) {missing}: an attribution graph needs one per MLP "
                             f"(model {lm.name} has {n_layers} layers)")
        if lm.info.final_logit_softcap:
            raise InputError(f"model {lm.name} soft-caps its logits; attribution graphs of soft-capped logits "
                             "are not supported yet")
        self.atts = [atts[L] for L in range(n_layers)]
        self.zero_positions = int(zero_positions)

    @property
    def n_layers(self) -> int:
        return len(self.atts)

    @property
    def transcoders(self) -> list:
        return [a.sae for a in self.atts]

    def in_hook(self, layer: int) -> str:
        return self.atts[layer].hook

    def out_hook(self, layer: int) -> str:
        return self.atts[layer].hook_out

    def tokens(self, prompt) -> torch.Tensor:
        """A prompt (str, or token ids) -> LongTensor ``[1, pos]``, tokenised as the transcoders expect."""
        if isinstance(prompt, str):
            return self.atts[0].tokens(prompt, truncate=False, what="prompt")
        ids = torch.as_tensor(prompt, dtype=torch.long).reshape(1, -1)
        if ids.numel() == 0:
            raise InputError("the prompt has no tokens")
        if int(ids.max()) >= self.lm.info.d_vocab or int(ids.min()) < 0:
            raise InputError(f"token ids must be in [0, {self.lm.info.d_vocab})")
        return ids.to(self.lm.device)

    # ------------------------------------------------------------------ transcoder pieces
    def _sae_in(self, layer: int, act: torch.Tensor) -> torch.Tensor:
        att = self.atts[layer]
        return att.site.port.to_sae(act).to(device=att.sae.device, dtype=torch.float32)

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """The skip path ``x W_skip^T`` of layer ``layer``'s transcoder (SAE side ``[..., d_in] -> [..., d_out]``)."""
        sae = self.atts[layer].sae
        return None if not sae.cfg.skip else x @ sae.W_skip.float().T

    def _encode(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [pos, d_in]`` -> (activations, pre-activations) ``[pos, d_sae]`` with the zeroed positions zero."""
        sae = self.atts[layer].sae
        f = sae.encode(x.to(sae.dtype)).float()
        pre = x @ sae.W_enc.float() + sae.b_enc.float()
        f[: self.zero_positions] = 0
        return f, pre

    def reconstruct(self, layer: int, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``sum_f a_f W_dec[f] + b_dec + skip``: ``[pos, d_out]``."""
        sae = self.atts[layer].sae
        out = f @ sae.W_dec.float() + sae.b_dec.float()
        s = self.skip(layer, x)
        return out if s is None else out + s

    # ------------------------------------------------------------------ one run of the original model
    @torch.no_grad()
    def setup(self, ids: torch.Tensor) -> Setup:
        """Run the original model on ``ids [1, pos]`` and read the replacement model's nodes (see ``Setup``)."""
        lm = self.lm
        hooks = [h for L in range(self.n_layers) for h in (self.in_hook(L), self.out_hook(L))] + ["hook_embed"]
        cap = lm.run(ids, capture=hooks, return_logits=True)
        logits = check_finite(cap["logits"][0].float(), f"model {lm.name} (logits)")
        n_pos, zp = ids.shape[-1], self.zero_positions
        feats, acts, pres, benc, enc, dec, errs, consts = [], [], [], [], [], [], [], []
        for L, att in enumerate(self.atts):
            sae = att.sae
            x = self._sae_in(L, cap[self.in_hook(L)][0])
            y = att.site.write_port.to_sae(cap[self.out_hook(L)][0]).float()
            f, pre = self._encode(L, x)
            err = y.double() - self.reconstruct(L, x, f).double()
            err[:zp] = 0
            const = sae.b_dec.float().expand(n_pos, -1).clone()
            const[:zp] = y[:zp] - (0 if self.skip(L, x) is None else self.skip(L, x)[:zp])
            pos, idx = f.nonzero(as_tuple=True)
            feats.append(torch.stack([torch.full_like(pos, L), pos, idx], 1))
            acts.append(f[pos, idx])
            pres.append(pre[pos, idx])
            benc.append(sae.b_enc.float()[idx])
            enc.append(sae.W_enc.float()[:, idx].T)
            dec.append(sae.W_dec.float()[idx] * f[pos, idx, None])
            errs.append(check_finite(err, f"the transcoder on {att.hook_out} (error node)"))
            consts.append(const)
        embeds = cap["hook_embed"][0].float()
        return Setup(ids, torch.cat(feats).cpu(), torch.cat(acts), torch.cat(pres), torch.cat(benc), torch.cat(enc),
                     torch.cat(dec), torch.stack(errs).float(), embeds, torch.stack(consts), logits, torch.stack(errs))

    # ------------------------------------------------------------------ exactness
    @torch.no_grad()
    def check_exact(self, ids: torch.Tensor, setup: Setup | None = None) -> float:
        """Largest |logit difference| between the original model and the replacement model with error nodes
        (every MLP output rebuilt as transcoder reconstruction + error inside one forward pass)."""
        setup = setup or self.setup(ids)
        cache, edits = {}, {}
        for L in range(self.n_layers):
            edits[self.in_hook(L)] = _store(cache, L)
            edits[self.out_hook(L)] = self._rebuild(L, cache, setup)
        with self.lm.intervene(edits):
            logits = self.lm(ids)[0].float()
        return float((logits - setup.logits).abs().max())

    def _rebuild(self, L: int, cache: dict, setup: Setup):
        port = self.atts[L].site.write_port

        def fn(act):
            x = self._sae_in(L, cache.pop(L)[0])
            f, _ = self._encode(L, x)
            y = (self.reconstruct(L, x, f).double() + setup.errors64[L]).float()
            y[: self.zero_positions] = port.to_sae(act)[0, : self.zero_positions].float()
            return port.from_sae(y[None], act)

        return fn


def _store(cache: dict, key):
    def fn(act):
        cache[key] = act
        return None

    return fn


def describe(sae) -> str:
    from ..site import sae_name

    return f"transcoder {sae_name(sae)}"


@contextmanager
def frozen_parameters(module: torch.nn.Module, keep=()):
    """Parameters of ``module`` do not require grad inside the block, except those in ``keep`` (restored after)."""
    saved = [(p, p.requires_grad) for p in module.parameters()]
    keep_ids = {id(p) for p in keep}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep_ids)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def require_float32(lm) -> None:
    if lm.dtype != torch.float32:
        raise ConfigError(f"model {lm.name} is loaded in {lm.dtype}; attribution graphs need float32 "
                          "(load it with dtype=torch.float32)")
