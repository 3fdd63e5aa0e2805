"""Direct effects between the nodes of the local replacement model, by batched backward passes (circuit-tracing).

Nodes, in this order (the order of the adjacency matrix, rows = targets, columns = sources):
``features`` (active transcoder features, sorted by layer, position, index), ``errors`` (layer-major, one per
(layer, position)), ``tokens`` (one embedding per position), ``logits`` (the targets at the last position).

One forward pass of the linearised model (``lm.linearized()``: attention patterns and norm scales constant for
autograd) runs on ``batch_size`` copies of the prompt, with every MLP output replaced by a constant (its value
detached) plus its transcoder's linear skip path and a zero probe. A batch of targets is then one backward pass:
row ``b`` injects a target's direction where it reads the residual stream (a feature: its encoder column at its
input hook and position; a logit: the unembedding column minus the vocabulary mean, read through the final norm's gain at its ``x̂``),
and the gradient at each probe and at ``hook_embed`` contracted with a source's vector is the direct effect:

    A[target, feature s] = grad(layer_s, pos_s) . a_s W_dec[s]
    A[target, error (L, p)] = grad(L, p) . e(L, p)
    A[target, token p] = grad(embed, p) . embed(p)

A target feature's pre-activation is then the sum of its row plus a constant (biases, position embeddings,
b_dec, b_enc): edges are effects on pre-activations, as in circuit-tracer 0.5.0. Logit targets are demeaned
logits ``z_t - mean_v z_v``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..progress import progress
from ..site import Readout
from .replacement import ReplacementModel, Setup, frozen_parameters

log = logging.getLogger(__name__)
MAX_ADJACENCY_BYTES = 16 * 2**30


@dataclass
class LogitTargets:
    token_ids: torch.Tensor        # [k] long
    probabilities: torch.Tensor    # [k]
    vectors: torch.Tensor          # [k, d_model] demeaned unembedding columns
    inject: torch.Tensor           # [k, d_model] the same read at the final norm's x̂: times its gain (w + offset)
    constants: torch.Tensor        # [k] the final norm's bias . demeaned column (part of each logit's constant)


def salient_logits(lm, logits: torch.Tensor, max_n_logits: int = 10, desired_logit_prob: float = 0.95,
                   target: int | None = None) -> LogitTargets:
    """The most likely next tokens until their cumulative probability reaches ``desired_logit_prob`` (at most
    ``max_n_logits``); with ``target`` the one token given. ``logits [vocab]`` at the last position."""
    probs = torch.softmax(logits.float(), -1)
    if target is not None:
        ids = torch.tensor([int(target)], device=logits.device)
    else:
        k = min(int(max_n_logits), probs.shape[-1])
        top_p, top_i = probs.topk(k)
        cut = int(torch.searchsorted(top_p.cumsum(0), torch.tensor(desired_logit_prob, device=top_p.device))) + 1
        ids = top_i[:cut]
    W_U = lm.unembed_matrix().detach().float()              # [d_model, vocab]
    vecs = (W_U[:, ids] - W_U.mean(-1, keepdim=True)).T
    readout = Readout(lm)
    inject = vecs * readout.gain.to(vecs)
    const = vecs.double().cpu() @ readout.bias.cpu() if readout.bias is not None else torch.zeros(len(ids))
    return LogitTargets(ids.cpu(), probs[ids].cpu(), vecs, inject, const.float())


@dataclass
class Attribution:
    """The full (unpruned) graph of direct effects. ``adjacency [n, n]`` (rows targets, columns sources)."""
    setup: Setup
    targets: LogitTargets
    adjacency: torch.Tensor

    @property
    def n_features(self) -> int:
        return int(self.setup.features.shape[0])


class _LinearPass:
    """One forward pass of the linearised replacement model on ``batch`` copies of the prompt, kept for backward."""

    def __init__(self, rm: ReplacementModel, setup: Setup, batch: int, bias_params: list | None = None):
        self.rm, self.setup, lm = rm, setup, rm.lm
        self.bias_params = list(bias_params or [])
        ids = setup.ids.expand(batch, -1)
        dev = lm.device
        self.inputs: dict[int, torch.Tensor] = {}
        self.final: torch.Tensor | None = None
        self.probes = [torch.zeros(batch, setup.n_pos, rm.atts[L].sae.d_out, device=dev, requires_grad=True)
                       for L in range(rm.n_layers)]
        self.embed_probe = torch.zeros(batch, *setup.embeds.shape, device=dev, requires_grad=True)
        edits = {"hook_embed": lambda act: act.detach() + self.embed_probe}
        for L in range(rm.n_layers):
            edits[rm.in_hook(L)] = self._keep_input(L)
            edits[rm.out_hook(L)] = self._constant_output(L)
        with frozen_parameters(lm.hf_model, keep=self.bias_params), lm.linearized(), lm.intervene(edits):
            self.final = lm.run(ids, capture="ln_final.hook_normalized", grad=True)["ln_final.hook_normalized"]

    def _keep_input(self, L: int):
        def fn(act):
            self.inputs[L] = act
            return None
        return fn

    def _constant_output(self, L: int):
        rm, port = self.rm, self.rm.atts[L].site.write_port

        def fn(act):
            x = self.inputs[L]
            s = rm.skip(L, rm._sae_in(L, x))
            y = act.detach()
            if s is not None:
                y = y + port.delta_from_sae(s - s.detach(), act)
            return y + port.delta_from_sae(self.probes[L], act)
        return fn

    def _backward(self, layers, positions, vectors, inputs: list) -> tuple:
        """Gradients of ``sum_b <vectors[b], t_layers[b][b, positions[b]]>`` with respect to ``inputs``."""
        rm = self.rm
        outputs, grads = [], []
        for L in layers.unique().tolist():
            m = layers == L
            t = self.final if L == rm.n_layers else self.inputs[L]
            g = torch.zeros_like(t)
            rows = torch.nonzero(m).reshape(-1).to(t.device)
            g[rows, positions[m].to(t.device)] = vectors[m].to(t.dtype)
            outputs.append(t)
            grads.append(g)
        return torch.autograd.grad(outputs, inputs, grads, retain_graph=True, allow_unused=True)

    def rows(self, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Direct effects on a batch of targets: ``layers [b]`` (n_layers = the final norm output, for logits),
        ``positions [b]``, injected ``vectors [b, d]`` -> ``[b, n_features + (n_layers + 1) * pos]``."""
        rm, s = self.rm, self.setup
        b = len(layers)
        got = self._backward(layers, positions, vectors, self.probes + [self.embed_probe])
        n_pos = s.n_pos
        feat_cols, err_cols = [], []
        fl, fp = s.features[:, 0].to(s.decoder.device), s.features[:, 1].to(s.decoder.device)
        for L in range(rm.n_layers):
            g = got[L]
            m = fl == L
            if g is None:
                feat_cols.append(torch.zeros(b, int(m.sum()), device=s.decoder.device))
                err_cols.append(torch.zeros(b, n_pos, device=s.decoder.device))
                continue
            g = g[:b]
            dec = s.decoder[m]
            per_pos = g @ dec.T                                    # [b, pos, n_L]
            feat_cols.append(per_pos[:, fp[m], torch.arange(dec.shape[0], device=dec.device)])
            err_cols.append((g * s.errors[L]).sum(-1))
        ge = got[-1]
        tok = torch.zeros(b, n_pos, device=s.embeds.device) if ge is None else (ge[:b] * s.embeds).sum(-1)
        return torch.cat(feat_cols + err_cols + [tok], 1)


    def constant(self, layer: int, position: int, vector: torch.Tensor) -> float:
        """The constant part of one target (batch 1, built with ``bias_params``): the effect of every bias and
        position embedding of the model and of the MLP outputs' constant parts (b_dec; zeroed positions)."""
        got = self._backward(torch.tensor([layer]), torch.tensor([position]), vector[None],
                             self.probes + self.bias_params)
        total = 0.0
        for L in range(self.rm.n_layers):
            if got[L] is not None:
                total += float((got[L][0] * self.setup.constants[L]).sum())
        for p, g in zip(self.bias_params, got[self.rm.n_layers:]):
            if g is not None:
                total += float((g.double() * p.detach().double()).sum())
        return total


def bias_parameters(lm) -> list:
    """The model's additive constants: every parameter named ``*bias`` and every embedding table other than the
    token embedding (position embeddings)."""
    tok = lm.hf_model.get_input_embeddings()
    out = [p for name, p in lm.hf_model.named_parameters() if name.endswith("bias")]
    out += [m.weight for m in lm.hf_model.modules() if isinstance(m, torch.nn.Embedding) and m is not tok
            and m is not lm.hf_model.get_output_embeddings()]
    return out


def constant_terms(rm: ReplacementModel, att: "Attribution", rows) -> torch.Tensor:
    """Per target row of ``att.adjacency`` (feature index, or ``n_nodes - n_logits + i`` for logit i): its constant
    term, so that ``pre-activation (or demeaned logit) = adjacency[row].sum() + constant`` (completeness). One
    backward pass per row: for checks, not for building graphs."""
    s = att.setup
    lp = _LinearPass(rm, s, 1, bias_parameters(rm.lm))
    n_logit0 = att.adjacency.shape[0] - len(att.targets.token_ids)
    out = []
    for r in rows:
        r = int(r)
        if r >= n_logit0:
            i = r - n_logit0
            out.append(lp.constant(rm.n_layers, s.n_pos - 1, att.targets.inject[i]) + float(att.targets.constants[i]))
        else:
            L, p, _ = s.features[r].tolist()
            out.append(lp.constant(L, p, s.encoder[r]) + float(s.b_enc[r]))
    return torch.tensor(out, dtype=torch.float64)


def attribute(rm: ReplacementModel, ids: torch.Tensor, max_n_logits: int = 10, desired_logit_prob: float = 0.95,
              target: int | None = None, batch_size: int = 64, quiet: bool = False) -> Attribution:
    """The full graph of direct effects for the prompt ``ids [1, pos]`` (see the module docstring)."""
    if not 0 < desired_logit_prob <= 1:
        raise InputError(f"desired logit probability must be in (0, 1], got {desired_logit_prob}")
    if isinstance(max_n_logits, bool) or not isinstance(max_n_logits, int) or max_n_logits < 1:
        raise InputError(f"max_n_logits must be a positive integer, got {max_n_logits!r}")
    setup = rm.setup(ids)
    targets = salient_logits(rm.lm, setup.logits[-1], max_n_logits, desired_logit_prob, target)
    n_feat, n_pos, n_layers = setup.features.shape[0], setup.n_pos, rm.n_layers
    n_logits = len(targets.token_ids)
    logit_offset = n_feat + (n_layers + 1) * n_pos
    n = logit_offset + n_logits
    if n * n * 4 > MAX_ADJACENCY_BYTES:
        raise InputError(f"{n_feat} active features: the dense graph ({n} nodes) would need {n * n * 4 / 2**30:.0f} GiB; "
                         "use a shorter prompt or sparser transcoders")
    batch = max(1, min(batch_size, max(n_feat, n_logits)))
    lp = _LinearPass(rm, setup, batch)
    adjacency = torch.zeros(n, n)
    jobs = [("logit", i) for i in range(0, n_logits, batch)] + [("feature", i) for i in range(0, n_feat, batch)]
    for kind, start in progress(jobs, desc="attribution", unit="batch", disable=quiet):
        if kind == "logit":
            vec = targets.inject[start:start + batch]
            k = vec.shape[0]
            r = lp.rows(torch.full((k,), n_layers), torch.full((k,), n_pos - 1), vec)
            adjacency[logit_offset + start:logit_offset + start + k, :logit_offset] = r.cpu()
        else:
            sel = slice(start, min(start + batch, n_feat))
            r = lp.rows(setup.features[sel, 0], setup.features[sel, 1], setup.encoder[sel])
            adjacency[sel, :logit_offset] = r.cpu()
    return Attribution(setup, targets, adjacency)
