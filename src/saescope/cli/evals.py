"""``saescope eval``: reconstruction and downstream metrics of one or several SAEs (thin wrapper)."""
from __future__ import annotations

import argparse
import math

from .common import add_model_args, bounded_int, load_model, load_sae, print_json, seed_arg

_SHOWN = [
    ("tokens", "tokens", "d"), ("l0", "L0", ".2f"), ("explained_variance", "explained variance", ".4f"),
    ("fvu", "FVU", ".4f"), ("mse", "MSE", ".4g"), ("cosine_similarity", "cosine similarity", ".4f"),
    ("l2_ratio", "L2 ratio", ".4f"), ("relative_reconstruction_bias", "rel. reconstruction bias", ".4f"),
    ("ce_loss_clean", "CE clean", ".4f"), ("ce_loss_sae", "CE with SAE", ".4f"),
    ("ce_loss_zero_ablation", "CE zero-ablated", ".4f"), ("ce_loss_mean_ablation", "CE mean-ablated", ".4f"),
    ("ce_loss_recovered", "CE recovered (zero abl.)", ".4f"),
    ("ce_loss_recovered_mean_ablation", "CE recovered (mean abl.)", ".4f"),
    ("kl_sae", "KL with SAE", ".4g"), ("kl_score", "KL score (zero abl.)", ".4f"),
    ("kl_score_mean_ablation", "KL score (mean abl.)", ".4f"), ("dead_fraction", "dead fraction", ".4f"),
    ("dense_fraction_1pct", "dense > 1%", ".4f"), ("dense_fraction_10pct", "dense > 10%", ".4f"),
    ("seconds", "seconds", ".1f"),
]


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate SAEs: L0, explained variance, CE loss recovered, KL, dead features",
                       description="Evaluate one or several SAEs on a text sample. Repeat --sae to compare SAEs; "
                                   "--plot draws their L0 vs explained-variance trade-off.")
    add_model_args(p, sae=False)
    p.add_argument("--sae", action="append", default=None, metavar="SAE",
                   help="local SAE path or RELEASE:SAE_ID; repeat for several (default: tiny:resid2-topk)")
    p.add_argument("--dataset", required=True, metavar="FILE_OR_NAME",
                   help="HF dataset name, or a local .txt/.jsonl/.parquet file or folder")
    p.add_argument("--split", default="train", help="dataset split for HF datasets (default train)")
    p.add_argument("--column", default="text", help="text column of .jsonl/.parquet/HF datasets (default text)")
    p.add_argument("--tokens", type=bounded_int(1, 10**10), default=16_384, help="tokens to evaluate (default 16384)")
    p.add_argument("--context-size", type=bounded_int(2, 10**6), default=None,
                   help="tokens per context (default: the SAE's training context size, else 128)")
    p.add_argument("--batch-size", type=bounded_int(1, 4096), default=8, help="contexts per forward (default 8)")
    p.add_argument("--hook", default=None, help="override the hook named in the SAE's metadata")
    p.add_argument("--include-bos", action="store_true", help="also score BOS/EOS tokens (excluded by default)")
    p.add_argument("--no-downstream", action="store_true", help="skip the CE/KL forwards (reconstruction only)")
    p.add_argument("--seed", type=seed_arg, default=0, help="shuffle seed for the token contexts")
    p.add_argument("--plot", default=None, metavar="PNG", help="write an L0 vs explained-variance plot of the SAEs")
    p.add_argument("--density-plot", default=None, metavar="PNG",
                   help="write the feature-density histogram (of the first SAE)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..evals import evaluate_sae, plot_density_histogram, plot_l0_vs_ev
    from ..evals.plot import check_plot_path

    for path in (args.plot, args.density_plot):
        if path:
            check_plot_path(path)
    lm = load_model(args)
    specs = args.sae or [None]
    saes = [load_sae(argparse.Namespace(**{**vars(args), "sae": spec}), lm) for spec in specs]  # fail early
    results = []
    for spec, sae in zip(specs, saes):
        results.append(evaluate_sae(lm, sae, args.dataset, tokens=args.tokens, context_size=args.context_size,
                                    batch_size=args.batch_size, exclude_bos=not args.include_bos, hook=args.hook,
                                    downstream=not args.no_downstream, seed=args.seed, name=spec,
                                    split=args.split, column=args.column))
    if args.plot:
        plot_l0_vs_ev(results, args.plot)
    if args.density_plot:
        plot_density_histogram(results[0], args.density_plot)
    if args.json:
        dicts = [r.to_dict() for r in results]
        print_json(dicts[0] if len(dicts) == 1 else dicts)
        return 0
    for r in results:
        d = r.to_dict()
        print(f"{r.sae}  on {r.model} at {r.hook}")
        for key, label, fmt in _SHOWN:
            value = d.get(key)
            text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)
            print(f"  {label:<26} {text}")
        for p in r.prefixes:  # Matryoshka SAEs: each nested prefix of the latents
            print(f"  prefix {p.width:<7} L0 {p.l0:.2f}, explained variance {p.explained_variance:.4f}, "
                  f"CE recovered {p.ce_loss_recovered:.4f}, dead {p.dead_fraction:.4f}")
    return 0
