"""``saescope trace``: the attribution graph of a prompt's next-token prediction (thin wrapper over saescope.graph).

JSON contract (``--json``): {"out", "model", "transcoders", "features", "nodes", "edges", "logits": [{"token", "id",
"prob"}], "replacement_score", "completeness_score", "max_logit_error", "seconds"}.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .common import bounded_float, bounded_int, print_json


def _trace(args) -> int:
    import torch

    from ..graph import feature_labels, load_transcoders, trace, write_json
    from ..lm import LanguageModel

    out = Path(args.out)
    if out.suffix.lower() not in (".json", ".safetensors"):
        raise InputError(f"--out {out}: give a .json (Neuronpedia graph) or .safetensors (compact, full) file")
    lm = LanguageModel.from_pretrained(args.model or "tiny", device=args.device, dtype=torch.float32)
    tcs = load_transcoders(lm, args.transcoders)
    g = trace(lm, tcs, args.prompt, target=args.target, max_n_logits=args.max_logits,
              desired_logit_prob=args.logit_prob, batch_size=args.batch_size)
    pr = g.prune(args.node_threshold, args.edge_threshold)
    if out.suffix.lower() == ".json":
        write_json(g, out, node_threshold=args.node_threshold, edge_threshold=args.edge_threshold,
                   labels=feature_labels(tcs))
    else:
        g.save(out)
    logits = [{"token": s, "id": int(i), "prob": float(p)}
              for s, i, p in zip(g.logit_strings, g.logit_ids.tolist(), g.logit_probabilities.tolist())]
    summary = {"out": str(out), "model": g.model, "transcoders": g.transcoders, "features": g.n_features,
               "nodes": int(pr.node_mask.sum()), "edges": int(pr.edge_mask.sum()), "logits": logits, **g.info}
    if args.json:
        print_json(summary)
        return 0
    print(f"{g.n_features} active features; kept {summary['nodes']} nodes and {summary['edges']} edges "
          f"(node threshold {args.node_threshold}, edge threshold {args.edge_threshold})")
    print("targets: " + ", ".join(f"{d['token']!r} {d['prob']:.3f}" for d in logits))
    print(f"replacement score {g.info['replacement_score']:.3f}, completeness score "
          f"{g.info['completeness_score']:.3f}; replacement model max |logit error| {g.info['max_logit_error']:.2g}")
    print(f"wrote {out} in {g.info['seconds']:.1f} s")
    return 0


def register(sub) -> None:
    p = sub.add_parser("trace", help="attribution graph of a prompt through transcoder features (Neuronpedia JSON)")
    p.add_argument("prompt")
    p.add_argument("--out", required=True, help="graph file: .json (Neuronpedia attribution graph, pruned) or "
                                                ".safetensors (saescope's compact format, unpruned)")
    p.add_argument("--target", default=None, help="attribute this one next token instead of the most likely ones")
    p.add_argument("--transcoders", default=None,
                   help="per-layer transcoders: RELEASE:ID{L} or PATH{L} ({L} = layer), a comma-separated list, a "
                        "folder with one per layer, or a release name (default: tiny:mlp{L}-transcoder)")
    p.add_argument("--model", default=None, help="HF model id or local directory (default: the bundled tiny model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available, else cpu)")
    p.add_argument("--node-threshold", type=bounded_float(0, 1), default=0.8,
                   help="keep the nodes holding this share of the influence on the logits (default 0.8)")
    p.add_argument("--edge-threshold", type=bounded_float(0, 1), default=0.98,
                   help="keep the edges holding this share of the edge influence (default 0.98)")
    p.add_argument("--max-logits", type=bounded_int(1, 1000), default=10, help="at most this many target logits")
    p.add_argument("--logit-prob", type=bounded_float(0, 1, lo_open=True), default=0.95,
                   help="target logits until their cumulative probability reaches this (default 0.95)")
    p.add_argument("--batch-size", type=bounded_int(1, 4096), default=64, help="targets per backward pass")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(handler=_trace)
