"""``saescope dashboard`` and ``saescope serve``: thin wrappers over saescope.report and saescope.server."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError
from .common import add_model_args, bounded_int, load_model, load_sae, print_json


def _dashboard(args) -> int:
    from ..report import StatsConfig, build_dashboard, export_neuronpedia
    from ..report.dashboard import check_out_dir
    from ..report.store import FeatureStore

    check_out_dir(args.out)     # refuse before loading anything
    lm = load_model(args)
    sae = load_sae(args, lm)
    cfg = StatsConfig(n_tokens=args.tokens, context_size=args.context_size, batch_size=args.batch_size,
                      top_k=args.top_k, seed=args.seed)
    res = build_dashboard(lm, sae, args.dataset, args.out, cfg, resume=args.resume)
    out = res.to_dict()
    if args.neuronpedia:
        with FeatureStore(res.out_dir / "features.sqlite") as store:
            exp = export_neuronpedia(store, args.neuronpedia)
        out["neuronpedia"] = str(exp.source_dir)
    if args.json:
        print_json(out)
    else:
        print(f"{res.n_features} feature pages over {res.n_tokens:,} tokens "
              f"({out['tokens_per_second']} tok/s): open {res.index}")
        if args.neuronpedia:
            print(f"Neuronpedia batches: {out['neuronpedia']}")
    return 0


def _serve(args) -> int:
    from ..report.store import FeatureStore
    from ..server import ServerConfig, bind_socket, create_app, serve

    cfg = ServerConfig(max_text_chars=args.max_text_chars, max_new_tokens=args.max_new_tokens,
                       max_concurrent_generations=args.max_concurrent_generations,
                       max_concurrent_reads=args.max_concurrent_reads, max_body_bytes=args.max_body_bytes,
                       allowed_hosts=tuple(args.allowed_host or ()))
    graphs = args.graphs if args.graphs is not None else [p for p in (Path("graphs"),) if p.is_dir()]
    for g in graphs:
        if not g.exists():
            raise InputError(f"--graphs {g}: no such folder or file")
    sock = bind_socket(args.host, args.port)          # a busy port fails before the model loads
    lm = load_model(args)
    sae = load_sae(args, lm)
    store = FeatureStore.for_sae(sae, args.store, lm=lm, allow_mismatch=args.allow_mismatch)
    from ..assets import TINY_DEFAULT_SAE, TINY_MODEL_NAME

    app = create_app(lm, sae, args.sae or f"{TINY_MODEL_NAME}:{TINY_DEFAULT_SAE}", store, cfg, graphs=graphs)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"saescope serving {lm.name} · {sae.cfg.metadata.hook_name} on http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
    if graphs:
        print(f"attribution graphs from {', '.join(map(str, graphs))}: http://{shown}:{port}/graphs", flush=True)
    if store is None:
        sys.stderr.write("note: no feature statistics for this SAE; build them with `saescope dashboard` and pass --store\n")
    serve(app, sock)
    return 0


def register(sub) -> None:
    from pathlib import Path

    p = sub.add_parser("dashboard", help="feature statistics over a corpus and static HTML feature pages")
    p.add_argument("--dataset", required=True, help="HF dataset id or a local .txt/.jsonl/.parquet file or folder")
    p.add_argument("--tokens", type=bounded_int(1, 10**10), default=200_000, help="tokens to read (default 200000)")
    p.add_argument("--out", type=Path, required=True, help="output directory (new, empty, or a previous dashboard)")
    p.add_argument("--context-size", type=bounded_int(2, 1 << 16), default=128, help="tokens per context (default 128)")
    p.add_argument("--batch-size", type=bounded_int(1, 4096), default=32, help="contexts per forward pass")
    p.add_argument("--top-k", type=bounded_int(1, 1000), default=16, help="max-activating examples per feature")
    p.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out")
    p.add_argument("--neuronpedia", type=Path, default=None, metavar="DIR",
                   help="also export Neuronpedia upload batches (features/activations JSONL) into DIR")
    add_model_args(p)
    p.set_defaults(handler=_dashboard)

    p = sub.add_parser("serve", help="local web app: feature pages, search by text, steering playground")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=bounded_int(0, 65535), default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="also answer requests for this host name (repeatable); localhost, 127.0.0.1, [::1] and the "
                        "bound address always work, any other Host gets 421 (protects against DNS rebinding)")
    p.add_argument("--store", default=None, help="features.sqlite to show (default: the one beside the SAE, if any)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="serve a feature store built for another SAE anyway (a warning instead of an error)")
    p.add_argument("--graphs", type=Path, action="append", metavar="DIR",
                   help="folder of saved attribution graphs (`saescope trace --out DIR/NAME.json`), or one graph "
                        "file; repeatable; shown at /graphs (default: ./graphs when that folder exists)")
    p.add_argument("--max-text-chars", type=bounded_int(1, 10**6), default=4000, help="cap on text/prompt length")
    p.add_argument("--max-new-tokens", type=bounded_int(1, 1024), default=128, help="cap on generated tokens per request")
    p.add_argument("--max-concurrent-generations", type=bounded_int(1, 64), default=2,
                   help="steering requests running or waiting; more get HTTP 503")
    p.add_argument("--max-concurrent-reads", type=bounded_int(1, 1024), default=8,
                   help="/api/read requests running or waiting; more get HTTP 503")
    p.add_argument("--max-body-bytes", type=bounded_int(256, 1 << 26), default=64 * 1024, help="request body cap (413)")
    add_model_args(p)
    p.set_defaults(handler=_serve)
