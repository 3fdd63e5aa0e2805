"""Attribution of a model output to SAE features.

Direct logit attribution (``direct_logit_attribution``)
    What is decomposed: the target logit at one position, ``logit_t = cap(N(r)[pos] . W_U[:, t] + b_U[t])``,
    where ``r`` is the final residual stream (input of the final norm ``N``, as each family computes it; see
    ``saescope.site.readout``) and the norm's scale is frozen at its value on the real ``r`` (standard DLA).
    With the scale frozen the pre-cap logit ``z`` is linear in ``r``, and ``r`` splits exactly into parts at
    the SAE's hook activation ``x`` (for a transcoder: the activation ``y`` at its output hook, predicted as
    ``decode(f) + skip``):

        r = sum_f contribution_f + bias + error + rest
        contribution_f = decode(a_f e_f, s) - decode(0, s)   (= a_f * W_dec[f] in raw space for plain SAEs)
        bias           = decode(0, s)                        (b_dec, plus what the input transform adds back)
        error          = x - decode(a, s)                    (the SAE error)
        rest           = r - x                               (everything else that writes to the residual:
                                                              the downstream layers for a residual hook; all
                                                              other components for an attn_out/mlp_out hook)

    so ``sum(features) + bias + error + rest + constant`` (constant = final-norm bias . W_U[:, t] + b_U[t])
    equals ``z``. A model that soft-caps its logits (Gemma-2: ``logit = c tanh(z / c)``) reports every term
    scaled by ``logit / z``, so the terms still sum to the model's logit (rankings and signs unchanged;
    ``extra["softcap"]`` records ``z`` and the factor). The total is checked against the model's own logit:
    ``|total - logit| <= 1e-4 * max(1, |logit|)``, else a NumericsError (``Attribution.residual`` reports the
    rounding). Feature terms are *direct* effects only: what the feature writes straight to the logit, not
    through later layers (those are in ``rest``). Works for SAEs whose decoder writes to ``hook_resid_pre/mid/
    post``, ``hook_attn_out`` or ``hook_mlp_out`` (transcoders: their output hook).

Gradient attribution patching (``gradient_attribution``)
    The SAE is spliced into the forward pass as ``x' = decode(a, s) + error``, with the feature activations
    ``a [pos, d_sae]`` and the error ``[pos, d_in]`` as leaves (``x' == x``, so the model output is unchanged).
    A feature node's attribution is ``a_{p,f} * dmetric/da_{p,f}``; the error node's is ``error_p . dmetric/derror_p``.
    To first order, ablating feature f at every position changes the metric by ``-sum_p attribution_{p,f}``.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from .. import display
from ..errors import InputError
from ..site import Readout, attach, check_finite, load_labels, single_token_id

log = logging.getLogger(__name__)

DLA_RTOL = 1e-4


@dataclass
class FeatureAttribution:
    index: int
    attribution: float
    activation: float
    position: int | None = None       # gradient attribution: the token position of the node; DLA: None
    label: str | None = None

    def to_dict(self) -> dict:
        d = {"index": self.index, "attribution": self.attribution, "activation": self.activation}
        if self.position is not None:
            d["position"] = self.position
        if self.label is not None:
            d["label"] = self.label
        return d


@dataclass
class Attribution:
    method: str                       # "dla" or "gradient"
    text: str
    hook: str
    tokens: list[str]
    position: int                     # absolute position of the target (DLA) / metric position
    target: str | None                # target token (when the metric is a token's logit)
    target_id: int | None
    value: float                      # the model's target logit (DLA) or metric value (gradient)
    features: list[FeatureAttribution]  # every active feature (node), descending by |attribution|
    error: float                      # SAE error term / node
    bias: float = 0.0                 # DLA: decode(0) (b_dec and the transform's add-back)
    rest: float = 0.0                 # DLA: the rest of the final residual (see module docstring)
    constant: float = 0.0             # DLA: final-norm bias and unembedding bias
    total: float = 0.0                # sum of all terms (DLA: reproduces ``value``)
    extra: dict = field(default_factory=dict)

    @property
    def residual(self) -> float:
        """DLA: ``total - value`` (float rounding only); gradient: the part first-order terms do not explain."""
        return self.total - self.value

    def top(self, k: int = 10) -> list[FeatureAttribution]:
        return self.features[:k]

    def by_feature(self) -> dict[int, float]:
        """Attribution per feature summed over positions, descending by absolute value."""
        out: dict[int, float] = {}
        for fa in self.features:
            out[fa.index] = out.get(fa.index, 0.0) + fa.attribution
        return dict(sorted(out.items(), key=lambda kv: -abs(kv[1])))

    def to_dict(self, top: int | None = None) -> dict:
        feats = self.features if top is None else self.features[:top]
        return {"method": self.method, "text": self.text, "hook": self.hook, "tokens": self.tokens,
                "position": self.position, "target": self.target, "target_id": self.target_id, "value": self.value,
                "features": [f.to_dict() for f in feats], "error": self.error, "bias": self.bias, "rest": self.rest,
                "constant": self.constant, "total": self.total, "residual": self.residual, **self.extra}

    def _repr_html_(self) -> str:
        return display.render_attribution(self)


def _position(pos: int, n: int) -> int:
    p = pos + n if pos < 0 else pos
    if not 0 <= p < n:
        raise InputError(f"position {pos} is outside the text's {n} tokens")
    return p


def _final_hook(lm) -> str:
    return f"blocks.{lm.info.n_layers - 1}.hook_resid_post"


def _target(lm, target, logits_row: torch.Tensor) -> tuple[int, str]:
    if target is None:
        tid = int(logits_row.argmax())
        return tid, lm.to_string(torch.tensor([tid]))
    return single_token_id(lm, target)


@torch.no_grad()
def direct_logit_attribution(lm, sae, text: str, target_token=None, position: int = -1,
                             prepend_bos: bool | None = None, chunk: int = 512) -> Attribution:
    """Direct logit attribution of every active feature at ``position`` to ``target_token`` (a single-token string
    or id; default: the model's top prediction there). See the module docstring for exactly what is decomposed.
    """
    att = attach(lm, sae)
    if prepend_bos is not None:
        att = dataclasses.replace(att, prepend_bos=bool(prepend_bos))
    if not att.in_residual_basis:
        raise InputError(f"direct logit attribution needs an SAE whose decoder writes to a residual-stream, attn_out "
                         f"or mlp_out hook; this one writes to {att.hook_out} (use gradient attribution instead)")
    ids = att.tokens(text)
    pos = _position(position, ids.shape[1])
    final = _final_hook(lm)
    out = lm.run(ids, capture=list(dict.fromkeys([att.hook, att.hook_out, final])), return_logits=True)
    for name, t in out.items():
        check_finite(t[0, : pos + 1], f"model {lm.name} at {name}")
    logits_row = out["logits"][0, pos]
    tid, tstr = _target(lm, target_token, logits_row)
    readout = Readout(lm)
    r = out[final][0, pos]                                                             # [d_model]
    g, constant = readout.frozen(r, tid)
    g_sae = g.to(sae.device)

    x = att.sae_input(out[att.hook][:, pos:pos + 1])[0]                                # [1, d_in]
    y = att.site.write_port.to_sae(out[att.hook_out][:, pos:pos + 1])[0].to(sae.device, sae.dtype)   # [1, d_out]
    f, state = sae.encode_with_state(x)                                                # [1, d_sae]
    check_finite(f, f"the SAE on {att.hook} (feature activations)")
    zero = sae.decode(torch.zeros_like(f), state)                                      # [1, d_out]
    skip = sae.skip_term(x)
    if skip is not None:
        zero = zero + skip                                                             # the skip path: a bias here
    y_hat = sae.decode(f, state) + (skip if skip is not None else 0)
    active = torch.nonzero(f[0] != 0).flatten()
    labels = load_labels(sae)
    terms: list[tuple[int, float, float]] = []
    for start in range(0, active.numel(), chunk):
        idx = active[start:start + chunk]
        onehot = torch.zeros(idx.numel(), f.shape[-1], dtype=f.dtype, device=f.device)
        onehot[torch.arange(idx.numel()), idx] = f[0, idx]
        contrib = sae.decode(onehot, state) - sae.decode(torch.zeros_like(onehot), state)   # [n, d_out]
        attr = contrib.double() @ g_sae
        terms += [(i, a, float(f[0, i])) for i, a in zip(idx.tolist(), attr.tolist())]
    bias = float(zero[0].double() @ g_sae)
    error = float((y - y_hat)[0].double() @ g_sae)
    rest = float((r.double() - y[0].to(r.device).double()) @ g.to(r.device))
    z = sum(a for _, a, _ in terms) + bias + error + rest + constant
    value = float(logits_row[tid])
    readout.check(z, value, f"position {pos} of {text[:40]!r}")
    factor, extra = 1.0, {}
    if readout.facts.softcap:
        factor = value / z if z != 0 else 1.0
        extra["softcap"] = {"cap": readout.facts.softcap, "pre_cap_logit": z, "factor": factor}
    feats = [FeatureAttribution(i, a * factor, act, None, labels.get(i)) for i, a, act in terms]
    feats.sort(key=lambda fa: -abs(fa.attribution))
    total = sum(fa.attribution for fa in feats) + (bias + error + rest + constant) * factor
    return Attribution("dla", text, att.hook_out, lm.to_str_tokens(ids[0]), pos, tstr, tid, value, feats,
                       error * factor, bias * factor, rest * factor, constant * factor, total, extra)


def _metric_fn(lm, metric, pos: int, logits_probe: torch.Tensor):
    """-> (callable logits [1, pos, vocab] -> scalar, target string or None, target id or None)."""
    if callable(metric):
        return metric, None, None
    tid, tstr = _target(lm, metric, logits_probe[0, pos])
    return (lambda logits: logits[0, pos, tid]), tstr, tid


def gradient_attribution(lm, sae, text: str, metric=None, position: int = -1,
                         prepend_bos: bool | None = None) -> Attribution:
    """Attribution patching: ``activation * d metric / d activation`` for every (position, active feature) node,
    and the SAE error as its own node per position (summed into ``Attribution.error``).

    ``metric``: a callable ``logits [1, pos, d_vocab] -> scalar tensor``, or a target token (string or id) whose
    logit at ``position`` is the metric, or None for the model's top prediction at ``position``.
    ``Attribution.extra["error_by_position"]`` lists the error node per position.
    """
    att = attach(lm, sae)
    if prepend_bos is not None:
        att = dataclasses.replace(att, prepend_bos=bool(prepend_bos))
    site = att.site
    ids = att.tokens(text)
    pos = _position(position, ids.shape[1])
    nodes = {}

    def read(act):
        """SAE: the features of the activation at the hook; transcoder: of its input hook (kept for the output)."""
        with torch.no_grad():
            xs = site.to_sae(act).detach().to(sae.device, sae.dtype)
            f, state = sae.encode_with_state(xs)
            skip = sae.skip_term(xs)
        nodes.update(code=(f, state, skip))

    def splice(act, ctx=None):
        """``y' = decode(f) (+ skip) + error`` with the features and the error as leaves (``y' == y``)."""
        if site.out is None:
            read(act)
        f, state, skip = nodes["code"]
        port = site.write_port
        y = port.to_sae(act).detach().to(sae.device, sae.dtype)
        with torch.no_grad():
            err = y - sae.decode(f, state) - (skip if skip is not None else 0)
        f_leaf = f.detach().clone().requires_grad_(True)
        err_leaf = err.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            y_new = sae.decode(f_leaf, state) + (skip if skip is not None else 0) + err_leaf
        nodes.update(f=f_leaf, err=err_leaf)
        return port.from_sae(y_new, act)

    def read_input(act, ctx=None):
        read(act)
        return None

    edits = {site.hook: splice} if site.out is None else {site.hook: read_input, site.hook_out: splice}

    with torch.no_grad():
        probe = lm(ids) if not callable(metric) else None
    fn, tstr, tid = _metric_fn(lm, metric, pos, probe) if probe is not None else (metric, None, None)
    with torch.enable_grad(), lm.intervene(edits):
        logits = lm(ids, grad=True)
        value = fn(logits)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise InputError("the metric must return a single number (a 0-d tensor) from the logits")
        if "f" not in nodes:
            raise InputError(f"the forward pass never reached {site.hook_out}")
        f, err = nodes["f"], nodes["err"]
        check_finite(value.detach(), "the metric")
        check_finite(f.detach(), f"the SAE on {site.hook} (feature activations)")
        # autograd.grad, not backward(): no .grad is left on the model's or the SAE's parameters
        grad_f, grad_e = torch.autograd.grad(value.reshape(()), [f, err], allow_unused=True)
    grad_f = grad_f if grad_f is not None else torch.zeros_like(f)
    grad_e = grad_e if grad_e is not None else torch.zeros_like(err)
    attr = (f.detach() * grad_f)[0]                                                   # [pos, d_sae]
    err_attr = (err.detach().double() * grad_e.double()).sum(-1)[0]                  # [pos]
    nz = torch.nonzero(f.detach()[0] != 0)
    labels = load_labels(sae)
    acts = f.detach()[0]
    feats = [FeatureAttribution(int(i), float(attr[p, i]), float(acts[p, i]), int(p), labels.get(int(i)))
             for p, i in nz.tolist()]
    feats.sort(key=lambda fa: -abs(fa.attribution))
    total = sum(fa.attribution for fa in feats) + float(err_attr.sum())
    return Attribution("gradient", text, site.hook_out, lm.to_str_tokens(ids[0]), pos, tstr, tid, float(value.detach()),
                       feats, float(err_attr.sum()), total=total,
                       extra={"error_by_position": err_attr.tolist()})
