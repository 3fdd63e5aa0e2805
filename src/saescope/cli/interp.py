"""``saescope read | steer | ablate | attribute | feature``: thin wrappers over saescope.interp.

JSON contracts (stable):
  read TEXT --top K --json   -> {"model", "sae", "hook", "tokens": [{"position", "token", "features": [{"index",
                                "activation"[, "label"]}], "l0"}], "mean_l0", "percent_active"
                                [, "trace": [{"index", "label", "activations": [per token]}] with --feature]}
  steer PROMPT --feature I --strength X --json -> {"prompt", "baseline", "steered", "model", "sae", "hook",
                                "interventions", "seed", "temperature", "top_p", "max_new_tokens", ...}
"""
from __future__ import annotations

import argparse

from ..errors import InputError
from .common import (add_model_args, bounded_float, bounded_int, finite_float, load_model, load_sae, positions_arg,
                     print_json, seed_arg)

MAX_NEW = 1024
METHODS = ("add", "clamp", "scale", "ablate")


def _spec(args) -> str:
    from ..assets import TINY_DEFAULT_SAE, TINY_MODEL_NAME

    return args.sae or f"{TINY_MODEL_NAME}:{TINY_DEFAULT_SAE}"


def _load(args):
    lm = load_model(args)
    sae = load_sae(args, lm)
    return lm, sae


def _console():
    from rich.console import Console

    return Console()


def _tok(s: str) -> str:
    from rich.markup import escape

    return escape(repr(s)[1:-1].replace("\\\\x", "\\x"))   # display_tokens' \xNN marks stay single


def _fmt_feat(index: int, value: float, label: str | None) -> str:
    from rich.markup import escape

    return f"{index}:{value:.3g}" + (f" [dim]({escape(label)})[/dim]" if label else "")


# ---------------------------------------------------------------------------------------------- read
def _read(args) -> int:
    from ..interp import feature_trace, read_features

    lm, sae = _load(args)
    [res] = read_features(lm, sae, args.text, top_k=args.top)
    trace = feature_trace(lm, sae, args.text, args.feature) if args.feature else None
    if args.json:
        d = res.to_dict()
        out = {"model": lm.name, "sae": _spec(args), "hook": res.hook, "tokens": d["tokens"],
               "mean_l0": res.mean_l0, "percent_active": res.percent_active}
        if trace is not None:
            out["trace"] = trace.to_dict()["features"]
        print_json(out)
        return 0
    from rich.table import Table

    table = Table(title=f"{lm.name} · {_spec(args)} · {res.hook}")
    table.add_column("pos", justify="right")
    table.add_column("token")
    table.add_column("L0", justify="right")
    table.add_column(f"top {args.top} features (index:activation)")
    for col in (trace.features if trace is not None else []):
        table.add_column(f"#{col}", justify="right")
    from ..lm.tokens import display_tokens

    shown = display_tokens(lm.tokenizer, [row.token_id for row in res.tokens])    # split characters merged
    for row in res.tokens:
        extra = [f"{v:.3g}" for v in trace.activations[row.position].tolist()] if trace is not None else []
        table.add_row(str(row.position), _tok(shown[row.position]), str(row.l0),
                      "  ".join(_fmt_feat(f.index, f.activation, f.label) for f in row.features), *extra)
    con = _console()
    con.print(table)
    con.print(f"mean L0 {res.mean_l0:.1f} · {res.percent_active:.1f}% of features active on this text")
    return 0


# ---------------------------------------------------------------------------------------------- steer / ablate
def _interventions(args, method: str):
    """(also used by saescope.server) argparse options -> [Intervention]."""
    from ..interp.steer import build_interventions

    return build_interventions(args.feature, args.strength, method, args.positions, getattr(args, "algebra", None))


def _generate(args, method: str) -> int:
    from ..interp import generate_steered

    lm, sae = _load(args)
    ivs = _interventions(args, method)
    res = generate_steered(lm, sae, args.prompt, ivs, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if args.json:
        print_json({**res.to_dict(), "model": lm.name, "sae": _spec(args)})
        return 0
    from rich.markup import escape
    from rich.table import Table

    from ..site import load_labels

    labels = load_labels(sae)
    what = ", ".join(f"{iv.method} " + (" ".join(f"{w:+g}*{f}" for f, w in zip(iv.features, iv.weights))
                                         if iv.weights else ",".join(str(f) for f in iv.features))
                     + ("" if iv.method == "ablate" else f" @ {iv.strength:g}")
                     + "".join(f" ({labels[f]})" for f in iv.features if f in labels) for iv in ivs)
    table = Table(title=f"{lm.name} · {_spec(args)} · {res.hook}", show_lines=True)
    table.add_column("")
    table.add_column("continuation of " + repr(args.prompt))
    table.add_row("baseline", escape(res.baseline))
    table.add_row(f"steered\n[dim]{escape(what)}[/dim]", escape(res.steered))
    con = _console()
    con.print(table)
    con.print(f"[dim]seed {res.seed} · temperature {res.temperature:g} · top-p {res.top_p:g} · positions {args.positions}[/dim]")
    return 0


def _steer(args) -> int:
    return _generate(args, args.method)


def _ablate(args) -> int:
    return _generate(args, "ablate")


# ---------------------------------------------------------------------------------------------- attribute
def _attribute(args) -> int:
    from ..interp import direct_logit_attribution, gradient_attribution

    lm, sae = _load(args)
    target = args.target
    if target is not None and args.target_id:
        try:
            target = int(target)
        except ValueError:
            raise InputError(f"--target-id needs an integer token id, got {target!r}") from None
    if args.method == "dla":
        res = direct_logit_attribution(lm, sae, args.text, target, position=args.position)
    else:
        res = gradient_attribution(lm, sae, args.text, target, position=args.position)
    if args.json:
        print_json({"model": lm.name, "sae": _spec(args), **res.to_dict(top=args.top)})
        return 0
    from rich.table import Table

    what = "direct logit attribution" if res.method == "dla" else "gradient attribution (activation × gradient)"
    table = Table(title=f"{what} to {res.target!r} at position {res.position} ({_tok(res.tokens[res.position])})")
    if res.method == "gradient":
        table.add_column("pos", justify="right")
    for col in ("feature", "activation", "attribution", "label"):
        table.add_column(col, justify="right" if col in ("feature", "activation", "attribution") else "left")
    for fa in res.top(args.top):
        cells = [str(fa.index), f"{fa.activation:.4g}", f"{fa.attribution:+.4g}", fa.label or ""]
        table.add_row(*([str(fa.position)] if res.method == "gradient" else []), *cells)
    con = _console()
    con.print(table)
    if res.method == "dla":
        con.print(f"logit {res.value:.4f} = features {sum(f.attribution for f in res.features):+.4f} "
                  f"+ SAE error {res.error:+.4f} + SAE bias {res.bias:+.4f} + rest of network {res.rest:+.4f} "
                  f"+ constant {res.constant:+.4f}  (sum {res.total:.4f})")
    else:
        con.print(f"metric {res.value:.4f}; SAE error node {res.error:+.4f}")
    return 0


# ---------------------------------------------------------------------------------------------- feature
def _feature(args) -> int:
    from ..interp import feature_info
    from ..report.store import FeatureStore

    lm, sae = _load(args)
    store, note = FeatureStore.for_sae_or_note(sae, args.store, lm=lm, allow_mismatch=args.allow_mismatch)
    try:
        info = feature_info(lm, sae, args.index, k=args.top, store=store, store_note=note)
    finally:
        if store is not None:
            store.close()
    if args.json:
        print_json({"model": lm.name, "sae": _spec(args), **info.to_dict()})
        return 0
    from rich.markup import escape
    from rich.table import Table

    con = _console()
    con.print(f"[bold]feature {info.index}[/bold] of {_spec(args)} ({info.hook})"
              + (f" — {escape(info.label)}" if info.label else ""))
    if info.neuronpedia_url:
        con.print(f"Neuronpedia: {info.neuronpedia_url}")
    if info.density is not None:
        con.print(f"density: {info.density:.3g}")
    if info.logit_lens_note:
        con.print(f"[dim]{escape(info.logit_lens_note)}[/dim]")
    else:
        table = Table(title="logit lens")
        table.add_column("promoted")
        table.add_column("", justify="right")
        table.add_column("suppressed")
        table.add_column("", justify="right")
        for p, s in zip(info.promoted, info.suppressed):
            table.add_row(_tok(p.token), f"{p.value:+.3g}", _tok(s.token), f"{s.value:+.3g}")
        con.print(table)
    if info.contexts:
        table = Table(title="top-activating contexts")
        table.add_column("activation", justify="right")
        table.add_column("context")
        for c in info.contexts:
            toks, center = c.get("tokens", []), int(c.get("center", 0))
            lo = max(0, center - 12)
            text = "".join(escape(t) if j != center else f"[bold reverse]{escape(t)}[/bold reverse]"
                           for j, t in enumerate(toks[lo:center + 6], start=lo))
            table.add_row(f"{float(c.get('value', 0.0)):.3g}", text.replace("\n", "⏎"))
        con.print(table)
    else:
        con.print(f"[dim]{escape(info.contexts_note or 'no contexts')}[/dim]")
    return 0


# ---------------------------------------------------------------------------------------------- register
def _gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=bounded_int(1, MAX_NEW), default=32, help=f"new tokens (1..{MAX_NEW})")
    p.add_argument("--temperature", type=bounded_float(0, 100), default=1.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--top-p", type=bounded_float(0, 1, lo_open=True), default=1.0, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed shared by baseline and steered")
    p.add_argument("--positions", type=positions_arg, default="all",
                   help="where to intervene: all, prompt, generated, from:N (BOS is position 0), at:N")


def register(sub) -> None:
    p = sub.add_parser("read", help="top SAE features per token of a text")
    p.add_argument("text")
    p.add_argument("--top", type=bounded_int(1, 1000), default=5, help="features per token (default 5)")
    p.add_argument("--feature", type=bounded_int(0, 2**31 - 1), action="append",
                   help="also trace this feature's activation on every token (repeatable; JSON key \"trace\")")
    add_model_args(p)
    p.set_defaults(handler=_read)

    p = sub.add_parser("steer", help="generate with and without steering a feature (same seed)")
    p.add_argument("prompt")
    p.add_argument("--feature", type=bounded_int(0, 2**31 - 1), action="append", help="feature index (repeatable)")
    p.add_argument("--strength", type=finite_float, action="append",
                   help="add/algebra: multiplier of the decoder direction (not unit-normalised); clamp: value; "
                        "scale: factor. One for all features or one per --feature")
    p.add_argument("--method", choices=METHODS, default="add")
    p.add_argument("--algebra", default=None, help="feature algebra added as one direction, e.g. '12-7' or '+3*12 -1*7'")
    _gen_args(p)
    add_model_args(p)
    p.set_defaults(handler=_steer, strength=None)

    p = sub.add_parser("ablate", help="generate with and without ablating features (SAE error kept)")
    p.add_argument("prompt")
    p.add_argument("--feature", type=bounded_int(0, 2**31 - 1), action="append", required=True,
                   help="feature index (repeatable)")
    _gen_args(p)
    add_model_args(p)
    p.set_defaults(handler=_ablate, strength=None, algebra=None)

    p = sub.add_parser("attribute", help="attribute a next-token logit to SAE features (DLA or gradient)")
    p.add_argument("text")
    p.add_argument("--target", default=None, help="target token (one token, mind the leading space); "
                                                  "default: the model's top prediction")
    p.add_argument("--target-id", action="store_true", help="--target is a token id")
    p.add_argument("--method", choices=("dla", "gradient"), default="dla")
    p.add_argument("--position", type=int, default=-1, help="token position of the prediction (default: last)")
    p.add_argument("--top", type=bounded_int(1, 100000), default=15, help="contributors to list")
    add_model_args(p)
    p.set_defaults(handler=_attribute)

    p = sub.add_parser("feature", help="logit lens, top contexts, label and Neuronpedia URL of one feature")
    p.add_argument("index", type=bounded_int(0, 2**31 - 1))
    p.add_argument("--top", type=bounded_int(1, 1000), default=10, help="tokens in the logit lens")
    p.add_argument("--store", default=None, help="feature statistics (features.sqlite; default: beside the SAE)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="use a feature store built for another SAE anyway (a warning instead of an error)")
    add_model_args(p)
    p.set_defaults(handler=_feature)
