"""``saescope harvest`` and ``saescope train``: parse, call one library function, print where the result is."""
from __future__ import annotations

from .common import bounded_int, finite_float, print_json, seed_arg

# CLI option -> TrainConfig field (options left unset keep the config file's / default value)
_TRAIN_FIELDS = {
    "architecture": "architecture", "k": "k", "expansion": "expansion", "d_sae": "d_sae", "batch_size": "batch_size",
    "tokens": "total_tokens", "lr": "lr", "l1_coefficient": "l1_coefficient", "l0_coefficient": "l0_coefficient",
    "target_l0": "target_l0",
    "checkpoint_every": "checkpoint_every", "seed": "seed", "device": "device", "model": "model", "hook": "hook",
    "dataset": "dataset", "split": "dataset_split", "column": "dataset_column", "context_size": "context_size",
    "wandb_project": "wandb_project", "log_every": "log_every", "target_hook": "target_hook",
    "matryoshka_widths": "matryoshka_widths",
}


def _train(args) -> int:
    from ..train import TrainConfig, train_from_config

    from pathlib import Path

    saved = Path(args.out) / "train_config.json"
    if args.config:
        cfg = TrainConfig.from_file(args.config)
    elif args.resume and saved.exists():  # --resume alone continues the run with its own settings
        cfg = TrainConfig.from_file(saved)
    else:
        cfg = TrainConfig()
    changes = {field: getattr(args, opt) for opt, field in _TRAIN_FIELDS.items() if getattr(args, opt) is not None}
    if args.no_plots:
        changes["plots"] = False
    if args.skip:
        changes["skip"] = True
    if changes.get("matryoshka_widths") is not None:
        changes["matryoshka_widths"] = tuple(changes["matryoshka_widths"])
    cfg = cfg.replace(**changes) if changes else cfg
    sae = train_from_config(cfg, activations=args.activations, out_dir=args.out, resume=args.resume)
    final = sae.cfg.metadata.extra.get("training", {}).get("final", {})
    if args.json:
        print_json({"out": str(args.out), "architecture": sae.cfg.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae,
                    **final})
    else:
        kind = f"transcoder ({sae.d_in} -> {sae.d_sae} -> {sae.d_out})" if sae.is_transcoder else f"SAE ({sae.d_in} -> {sae.d_sae})"
        print(f"saved {sae.cfg.architecture} {kind} to {args.out}")
        if final:
            print(f"final batch: L0 {final.get('l0', float('nan')):.1f}, explained variance "
                  f"{final.get('explained_variance', float('nan')):.3f}, dead {100 * final.get('dead_fraction', 0):.1f}%")
    return 0


def _harvest(args) -> int:
    from ..train import harvest_activations

    kw = {"target_hook": args.target_hook} if args.target_hook else {}
    cache = harvest_activations(args.model, args.hook, args.dataset, args.tokens, args.out, device=args.device, **kw,
                                split=args.split, column=args.column, context_size=args.context_size,
                                seed=args.seed, batch_size=args.batch_size, exclude_special=not args.include_special,
                                dtype=args.dtype)
    if args.json:
        print_json({"out": str(args.out), "tokens": len(cache), "d_in": cache.d_in})
    else:
        print(f"wrote {len(cache):,} activations of width {cache.d_in} to {args.out}")
    return 0


def register(sub) -> None:
    h = sub.add_parser("harvest", help="write a model's activations at a hook to an on-disk cache",
                       description="Run a model over a dataset and store the activations at one hook "
                                   "(sharded, memory-mapped, resumable) for `saescope train --activations`.")
    h.add_argument("--model", required=True, help="HF model id, local directory, or 'tiny'")
    h.add_argument("--hook", required=True, help="TransformerLens hook name, e.g. blocks.2.hook_resid_pre")
    h.add_argument("--target-hook", default=None,
                   help="also store this hook's activation beside --hook's: (input, target) pairs for a transcoder")
    h.add_argument("--dataset", required=True, help="HF dataset name, or a local .txt/.jsonl/.parquet file or folder")
    h.add_argument("--tokens", type=bounded_int(1, 10**12), required=True, help="number of activations to store")
    h.add_argument("--out", required=True, help="output directory (resumes an interrupted harvest)")
    h.add_argument("--split", default="train")
    h.add_argument("--column", default="text", help="text column of the dataset (default: text)")
    h.add_argument("--context-size", type=bounded_int(2, 1 << 20), default=128)
    h.add_argument("--batch-size", type=bounded_int(1, 1 << 16), default=32, help="contexts per forward pass")
    h.add_argument("--seed", type=seed_arg, default=0)
    h.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    h.add_argument("--include-special", action="store_true", help="keep BOS/EOS/padding positions")
    h.add_argument("--device", default=None)
    h.add_argument("--json", action="store_true")
    h.set_defaults(handler=_harvest)

    t = sub.add_parser("train", help="train a sparse autoencoder",
                       description="Train an SAE from --activations (a .npy/.safetensors [N, d_in] array or a harvest "
                                   "directory) or from --model/--hook/--dataset. With --target-hook it trains a "
                                   "transcoder from --hook to --target-hook (e.g. blocks.1.ln2.hook_normalized -> "
                                   "blocks.1.hook_mlp_out). Unset options come from --config (a JSON TrainConfig) "
                                   "or the defaults.")
    t.add_argument("--activations", default=None, help=".npy / .safetensors [N, d_in] file or a harvest directory")
    t.add_argument("--model", default=None)
    t.add_argument("--hook", default=None, help="input hook (TransformerLens name)")
    t.add_argument("--target-hook", default=None,
                   help="train a transcoder predicting this hook's activation from --hook's (from --model/--dataset)")
    t.add_argument("--skip", action="store_true", help="transcoders: add a linear skip path W_skip")
    t.add_argument("--matryoshka-widths", type=bounded_int(1, 1 << 26), nargs="+", default=None,
                   help="architecture matryoshka: nested prefix widths (default d_sae/16, d_sae/4, d_sae)")
    t.add_argument("--dataset", default=None)
    t.add_argument("--split", default=None)
    t.add_argument("--column", default=None)
    t.add_argument("--context-size", type=bounded_int(2, 1 << 20), default=None)
    t.add_argument("--architecture", choices=["relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka"], default=None)
    t.add_argument("--k", type=bounded_int(1, 1 << 20), default=None)
    t.add_argument("--expansion", type=bounded_int(1, 1 << 10), default=None)
    t.add_argument("--d-sae", type=bounded_int(1, 1 << 26), default=None)
    t.add_argument("--batch-size", type=bounded_int(1, 1 << 24), default=None)
    t.add_argument("--tokens", type=bounded_int(1, 10**13), default=None,
                   help="total training tokens (default: one pass over --activations, 2M when streaming)")
    t.add_argument("--lr", type=finite_float, default=None)
    t.add_argument("--l1-coefficient", type=finite_float, default=None)
    t.add_argument("--l0-coefficient", type=finite_float, default=None)
    t.add_argument("--target-l0", type=finite_float, default=None,
                   help="relu/gated/jumprelu: L0 the sparsity coefficient is steered to (default: k; 0: fixed coefficient)")
    t.add_argument("--checkpoint-every", type=bounded_int(0, 1 << 40), default=None, help="steps between checkpoints")
    t.add_argument("--log-every", type=bounded_int(1, 1 << 40), default=None)
    t.add_argument("--seed", type=seed_arg, default=None)
    t.add_argument("--device", default=None)
    t.add_argument("--wandb-project", default=None)
    t.add_argument("--config", default=None, help="JSON file of TrainConfig fields")
    t.add_argument("--out", required=True, help="output directory: the SAE, checkpoints, metrics.jsonl, plots")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--no-plots", action="store_true")
    t.add_argument("--json", action="store_true")
    t.set_defaults(handler=_train)
