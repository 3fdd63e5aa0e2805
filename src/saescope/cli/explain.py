"""``saescope explain``: LLM explanations of a feature store's features, scored by detection and fuzzing.

The store is changed in place (explanation tables added), except a store inside the installed saescope package
(the bundled SAE's): that one is never modified; pass ``--out COPY.sqlite`` and the explanations go into a copy.
``--out`` also works for any store; an existing ``--out`` copy is continued (resumed), never replaced.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .common import bounded_int, finite_float, print_json


def _package_dir() -> Path:
    import saescope

    return Path(saescope.__file__).resolve().parent


def _target(store: Path, out: Path | None) -> Path:
    """The file to write: ``store`` itself, or ``out`` (a copy of ``store`` made now, or an earlier copy)."""
    from ..errors import InputError
    from ..report.store import FeatureStore

    if not store.is_file():
        raise InputError(f"--store: {store} does not exist; build one with `saescope dashboard`")
    if out is None:
        if _package_dir() in store.resolve().parents:
            raise InputError(f"--store {store} is inside the installed saescope package and is never modified; "
                             "pass --out COPY.sqlite to write the explanations into a copy")
        return store
    if out.resolve() == store.resolve():
        return store
    if out.exists():
        with FeatureStore(store) as a, FeatureStore(out) as b:
            same = all(a.meta.get(k) == b.meta.get(k) for k in ("hook", "d_sae", "n_tokens", "model")) and len(a) == len(b)
        if not same:
            raise InputError(f"--out {out} exists and is not a copy of {store}; choose a new file")
        return out
    import shutil

    from .._io import atomic_write_bytes

    with open(store, "rb") as src:
        atomic_write_bytes(out, lambda f: shutil.copyfileobj(src, f, 1 << 20))
    return out


def _clients(args):
    """(llm client or None) from --endpoint / --local-model."""
    from ..errors import InputError
    from ..explain import ChatClient, ClientConfig, LocalChatClient

    if args.endpoint and args.local_model:
        raise InputError("pass either --endpoint or --local-model, not both")
    from .._checks import checked_float

    timeout = checked_float(args.timeout, "--timeout", lo=0, hi=3600, lo_open=True)
    cfg = ClientConfig(timeout_s=timeout, max_retries=args.max_retries, concurrency=args.concurrency)
    if args.endpoint:
        return ChatClient(args.endpoint, model=args.model, api_key_env=args.api_key_env, config=cfg)
    if args.local_model:
        return LocalChatClient(args.local_model, device=args.device, config=cfg)
    return None


def _explainer_and_judge(args, llm):
    from ..errors import InputError
    from ..explain import (CoinFlipJudge, ConstantJudge, LLMExplainer, LLMJudge, OracleJudge, TokenExplainer,
                           TokenMatchJudge)

    kind = args.explainer or ("llm" if llm else None)
    if kind is None:
        raise InputError("pass --endpoint URL (an OpenAI-compatible server) or --local-model HF_ID_OR_DIR, "
                         "or --explainer tokens for the offline baseline")
    if kind == "llm" and llm is None:
        raise InputError("--explainer llm needs --endpoint URL or --local-model HF_ID_OR_DIR")
    explainer = LLMExplainer(llm) if kind == "llm" else TokenExplainer()
    judge_kind = args.judge or ("llm" if llm else None)
    scorers = [s.strip() for s in args.scorers.split(",") if s.strip() and s.strip() != "none"]
    if not scorers:
        return explainer, None, []
    if judge_kind is None or (judge_kind == "llm" and llm is None):
        raise InputError("scoring needs --endpoint or --local-model, or --judge oracle|coin|yes|tokens, or --scorers none")
    judge = {"llm": lambda: LLMJudge(llm), "oracle": OracleJudge, "coin": lambda: CoinFlipJudge(args.seed),
             "yes": lambda: ConstantJudge(1.0), "tokens": TokenMatchJudge}[judge_kind]()
    return explainer, judge, scorers


def _negatives(args, store: Path):
    """The pool of non-activating contexts: verified on --negatives-from text with the SAE, else None (the store's)."""
    if not args.negatives_from:
        return None
    from ..errors import InputError
    from ..explain import NegativePool
    from ..lm import LanguageModel
    from ..report.store import FeatureStore
    from ..sae import SAE

    spec = args.sae or (str(store.parent) if (store.parent / "cfg.json").is_file() else None)
    if spec is None:
        raise InputError("--negatives-from needs the store's SAE: pass --sae PATH or RELEASE:SAE_ID")
    sae = SAE.from_spec(spec, device=args.device)
    lm = LanguageModel.from_pretrained(args.lm or sae.cfg.metadata.model_name or "tiny", device=args.device)
    FeatureStore.for_sae(sae, store, lm=lm, allow_mismatch=args.allow_mismatch).close()   # the store's own SAE
    return NegativePool.from_model(lm, sae, args.negatives_from, seed=args.seed)


def _explain(args) -> int:
    from ..assets import tiny_sae_dir
    from ..explain import ExplainConfig, Price, explain_store, parse_features
    from ..report.store import STORE_FILE, FeatureStore

    store = Path(args.store) if args.store else tiny_sae_dir() / STORE_FILE
    path = _target(store, args.out)
    with FeatureStore(path) as fs:
        features = parse_features(args.features, fs.d_sae)
    prices = dict(Price.parse(p) for p in args.price or [])
    cfg = ExplainConfig(n_positive=args.n_positive, n_negative=args.n_negative, n_fuzz=args.n_fuzz, seed=args.seed)
    pool = _negatives(args, store)
    llm = _clients(args)
    try:
        explainer, judge, scorers = _explainer_and_judge(args, llm)
        summary = explain_store(path, explainer, judge, scorers, features, cfg, concurrency=args.concurrency,
                                prices=prices, pool=pool)
    finally:
        if llm is not None:
            llm.close()
    if args.json:
        print_json(summary.to_dict())
    else:
        _print_summary(summary)
    return 1 if summary.failed else 0


def _print_summary(s) -> None:
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(s.skipped.items()))
    print(f"{s.explained} new explanations, {s.scored} features scored ({s.features} selected"
          f"{'; skipped ' + skipped if skipped else ''}) with {s.explainer}"
          f"{', judged by ' + s.judge if s.judge else ''} in {s.seconds:.1f}s")
    for scorer, metrics in s.means.items():
        parts = [f"{m} {v['mean']:.3f} ({v['features']} features)" for m, v in metrics.items()]
        print(f"  {scorer:<10} {'  '.join(parts) or 'no scores'}")
    if s.means and "detection" in s.means:
        print(f"  non-activating contexts: {s.negatives}")
    u = s.usage
    if u.get("requests"):
        cost = "cost unknown (pass --price MODEL=IN:OUT)" if u["cost_usd"] is None else f"cost ${u['cost_usd']:.4f}"
        print(f"  tokens: {u['prompt_tokens']:,} prompt + {u['completion_tokens']:,} completion in {u['requests']} "
              f"requests ({u['retries']} retries); {cost}")
    if s.failed:
        first = s.failed[0]
        sys.stderr.write(f"{len(s.failed)} features failed (rerun to retry them); feature {first['feature']}: "
                         f"{first['error']}\n")
    print(f"explanations in {s.store}")


def register(sub) -> None:
    p = sub.add_parser("explain", help="LLM explanations of features, scored (detection, fuzzing), into the store")
    p.add_argument("--store", default=None, help="features.sqlite (default: the bundled SAE's, which needs --out)")
    p.add_argument("--out", type=Path, default=None,
                   help="write into this copy of the store (made now; an earlier copy is continued)")
    p.add_argument("--endpoint", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default=None, help="model name at the endpoint (default: the endpoint's only model)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="name of the environment variable holding the API key (the key itself is never a flag)")
    p.add_argument("--local-model", default=None, metavar="HF_ID_OR_DIR", help="run this chat model locally instead")
    p.add_argument("--device", default=None, help="device of --local-model (cpu, cuda, ...)")
    p.add_argument("--explainer", choices=("llm", "tokens"), default=None,
                   help="llm (default with an endpoint/local model) or tokens (offline baseline: top tokens)")
    p.add_argument("--judge", choices=("llm", "oracle", "coin", "yes", "tokens"), default=None,
                   help="who answers the scoring questions: the LLM (default), the true activations, a coin, always "
                        "yes, or tokens (reads a --explainer tokens explanation literally)")
    p.add_argument("--features", default="all", help="all, 0-99, or 3,7,10-12 (default all)")
    p.add_argument("--scorers", default="detection,fuzzing", help="detection,fuzzing (default), one of them, or none")
    p.add_argument("--concurrency", type=bounded_int(1, 256), default=4, help="features in flight at once (default 4)")
    p.add_argument("--timeout", type=finite_float, default=120.0, help="seconds per request (default 120)")
    p.add_argument("--max-retries", type=bounded_int(0, 20), default=4, help="retries on 429/5xx/timeouts (default 4)")
    p.add_argument("--price", action="append", metavar="MODEL=IN:OUT",
                   help="dollars per million prompt:completion tokens of MODEL, for the cost (repeatable)")
    p.add_argument("--n-positive", type=bounded_int(0, 1000), default=10, help="detection: activating contexts")
    p.add_argument("--n-negative", type=bounded_int(0, 1000), default=10, help="detection: non-activating contexts")
    p.add_argument("--n-fuzz", type=bounded_int(0, 1000), default=10, help="fuzzing: contexts (half marked at random)")
    p.add_argument("--negatives-from", default=None, metavar="TEXT",
                   help="non-activating contexts verified on this text (dataset or file) with the SAE and model; "
                        "default: other features' examples in the store, presumed non-activating")
    p.add_argument("--sae", default=None, help="the store's SAE, for --negatives-from (default: the SAE beside the store)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="verify negatives with an SAE the store was not built for anyway (a warning, not an error)")
    p.add_argument("--lm", default=None, help="the SAE's model, for --negatives-from (default: from the SAE's metadata)")
    p.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_explain)
