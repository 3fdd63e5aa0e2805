"""Train, evaluate and store the bundled skip transcoders of the tiny model, one per MLP layer.

Run after build_tiny_model.py; read top to bottom:

    python scripts/build_tiny_transcoders.py        # about 5 minutes per layer on a 2-core CPU

For each layer L of the tiny model:

1. harvest (input, output) pairs of its MLP on the training split of ../shared/corpus (BOS excluded):
   ``blocks.L.ln2.hook_normalized`` (the MLP's input before the LayerNorm's affine) and
   ``blocks.L.hook_mlp_out`` (what the MLP adds to the residual stream);
2. train a BatchTopK skip transcoder with ``saescope.train_sae`` (``target_hook`` set, ``skip=True``); at
   inference it is a JumpReLU skip transcoder with the learned threshold, the layout SAELens loads
   (``jumprelu_skip_transcoder``);
3. store it in fp16 inside the package (``saescope/assets/tiny/saes/mlp{L}-transcoder/``, no plots);
4. evaluate it with ``saescope.evaluate_sae`` on the held-out slice of War and Peace: the fraction of the
   variance of ``hook_mlp_out`` explained, and the CE loss recovered with the MLP replaced (eval.json beside it).

Prints one model-card row per transcoder; merges the numbers into ``saes/report.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from corpus import train_and_held_out
from saescope import LanguageModel, SAE, TrainConfig, evaluate_sae, train_sae
from saescope.assets import TINY, tiny_sae_dir
from saescope.data import token_contexts

LAYERS = (0, 1, 2, 3)
D_SAE = 1024
K = 32


@torch.no_grad()
def harvest_pairs(lm, contexts: torch.Tensor, hook: str, target_hook: str, batch: int = 64):
    """(x [N, d_in], y [N, d_out]) at the two hooks for every non-BOS token."""
    xs, ys = [], []
    for s in range(0, len(contexts), batch):
        acts = lm.run(contexts[s:s + batch], capture=[hook, target_hook])
        xs.append(acts[hook][:, 1:].reshape(-1, acts[hook].shape[-1]))
        ys.append(acts[target_hook][:, 1:].reshape(-1, acts[target_hook].shape[-1]))
    return torch.cat(xs), torch.cat(ys)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per transcoder")
    p.add_argument("--harvest-tokens", type=int, default=500_000, help="distinct (x, y) pairs harvested per layer")
    p.add_argument("--layers", type=int, nargs="*", default=list(LAYERS))
    p.add_argument("--eval-tokens", type=int, default=42_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="tiny", help="model to harvest from (a path for dry runs)")
    p.add_argument("--skip-train", action="store_true", help="keep the trained transcoders; redo their evals")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    lm = LanguageModel.from_pretrained(args.model)
    parts = train_and_held_out()
    train_text = "".join(t for t, _ in parts.values())
    held_out_wp = parts["war_and_peace.txt"][1]
    ctx = 128
    contexts = torch.stack(list(token_contexts(lm, [train_text], ctx, shuffle_buffer=0)))
    # a seeded subset of the training windows, so that every layer sees the same tokens
    order = torch.randperm(len(contexts), generator=torch.Generator().manual_seed(args.seed))
    contexts = contexts[order[: -(-args.harvest_tokens // (ctx - 1))]]

    report, rows = {}, []
    for layer in args.layers:
        sae_id = f"mlp{layer}-transcoder"
        hook, target_hook = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
        dst = tiny_sae_dir(sae_id)
        path = TINY / "saes" / "report.json"
        minutes = (json.loads(path.read_text()) if path.exists() else {}).get(sae_id, {}).get("train_minutes", 0.0)
        if not args.skip_train:
            minutes = train_one(lm, contexts, sae_id, hook, target_hook, args, ctx)
        sae = SAE.load(dst, dtype=torch.float32)
        result = evaluate_sae(lm, sae, [held_out_wp], tokens=args.eval_tokens, context_size=ctx)
        (dst / "eval.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
        r = result.to_dict()
        report[sae_id] = {"hook": hook, "hook_out": target_hook, "train_minutes": round(minutes, 1), **{k: r[k] for k in (
            "l0", "explained_variance", "ce_loss_recovered", "kl_score", "dead_fraction", "tokens")}}
        rows.append(f"| `{sae_id}` | `{hook}` → `{target_hook}` | BatchTopK skip transcoder, k={K} | {D_SAE:,} | "
                    f"{r['l0']:.1f} | {r['explained_variance']:.3f} | {r['ce_loss_recovered']:.3f} | "
                    f"{r['kl_score']:.3f} | {100 * r['dead_fraction']:.1f}% | {minutes:.1f} min |")
        print(sae_id, json.dumps(report[sae_id]), flush=True)
        old = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**old, **report}, indent=1) + "\n")
    print("\n".join(rows))


def train_one(lm, contexts, sae_id: str, hook: str, target_hook: str, args, ctx: int) -> float:
    """Harvest the pairs, train, store fp16 in the package; returns the training minutes."""
    t0 = time.time()
    x, y = harvest_pairs(lm, contexts, hook, target_hook)
    print(f"{sae_id}: harvested {len(x):,} pairs in {time.time() - t0:.0f}s")
    cfg = TrainConfig(architecture="batchtopk", d_sae=D_SAE, k=K, skip=True, batch_size=4096,
                      total_tokens=args.tokens, lr=1e-3, seed=args.seed, model="tiny", hook=hook,
                      target_hook=target_hook, context_size=ctx, prepend_bos=True, plots=False,
                      dataset="shared/corpus: tinyshakespeare + war_and_peace, train split (95%)")
    work = Path(tempfile.mkdtemp(prefix=f"tiny-{sae_id}-"))
    t0 = time.time()
    train_sae((x, y), cfg, out_dir=work / "run")
    minutes = (time.time() - t0) / 60
    del x, y
    dst = tiny_sae_dir(sae_id)
    if dst.exists():
        shutil.rmtree(dst)
    SAE.load(work / "run").to(torch.float16).save(dst)
    shutil.rmtree(work, ignore_errors=True)
    return minutes


if __name__ == "__main__":
    main()
