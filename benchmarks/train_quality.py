"""Training quality, every architecture side by side: one table from one run on the same activations.

    python benchmarks/train_quality.py                     # bundled tiny model, blocks.2.hook_resid_pre
    python benchmarks/train_quality.py --tokens 400000 --archs topk jumprelu --no-saelens --json

Text: ../shared/corpus via scripts/corpus.py (train split for training, the held-out 5% for evaluation).
Activations are harvested once into memory (BOS/EOS excluded). Each architecture is trained by saescope with its
defaults (only ``expansion`` and ``batch_size`` given; ``total_tokens`` unset = one pass over the harvest) and,
where SAELens 6.54 trains the same architecture, by SAELens's own ``SAETrainer`` on the same batches (its
defaults; JumpReLU with its Gemma Scope 2 quadratic penalty at ``target_l0 = k``, the nearest thing it has to a
target). Every SAE is then measured the same way on held-out text:

    target L0   k for TopK/BatchTopK, saescope's target_l0 (default k) for relu/gated/jumprelu, "-" if none
    L0, EV      mean active latents and explained variance (about the mean) on held-out activations
    CE rec.     CE loss recovered with the SAE spliced in (saescope.evals.evaluate_sae; 0 = zero ablation)
    dead        fraction of latents that never fire on the held-out activations
    tok/s       training tokens / wall seconds of the training call (the machine is shared: see the load)

Goals: every sparsity-controlled row within +-20% of its target L0; JumpReLU and gated EV within 0.03 of TopK.
Matryoshka BatchTopK (widths d_sae/16, d_sae/4, d_sae) is trained by both libraries on the same activations. The
transcoder row is a skip transcoder of the MLP of the layer ``--transcoder-layer`` (``blocks.L.ln2.hook_normalized``
-> ``blocks.L.hook_mlp_out``, harvested as pairs from the same text): its EV is the target's, its CE loss recovered
is with that MLP's output replaced. SAELens 6.54 trains no transcoder, so that row has no peer.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

ARCHS = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")


def activations(lm, hook: str, text: str, tokens: int, context_size: int = 128, seed: int = 0,
                target_hook: str | None = None) -> torch.Tensor:
    """Activations [tokens, d_in] of one long text (cut into paragraphs as documents), shuffled; with
    ``target_hook``, [x | y] pair rows of the two hooks at the same tokens (saescope's transcoder pair stream)."""
    from saescope.data import ActivationStream, token_contexts

    docs = [p for p in text.split("\n\n") if p.strip()]
    contexts = token_contexts(lm, docs, context_size, prepend_bos=True, seed=seed)
    if target_hook is None:
        stream = ActivationStream(lm, hook, contexts, batch_size=4096, buffer_tokens=1 << 17, seed=seed,
                                  harvest_batch_size=32)
    else:
        from saescope.train.transcoder import PairStream

        stream = PairStream(lm, hook, target_hook, contexts, 4096, 1 << 17, seed, True, 32)
    out, have = [], 0
    for batch in stream:
        out.append(batch)
        have += batch.shape[0]
        if have >= tokens:
            break
    return torch.cat(out)[:tokens]


@torch.no_grad()
def held_out_metrics(sae, x: torch.Tensor) -> dict:
    f, state = sae.encode_with_state(x)
    x_hat = sae.decode(f, state)
    ev = 1 - float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    return {"l0": float((f > 0).sum(-1).float().mean()), "explained_variance": ev,
            "dead_fraction": float(1 - (f > 0).any(0).float().mean())}


def train_saescope(arch: str, x: torch.Tensor, args):
    from saescope.train import TrainConfig, train_sae

    cfg = TrainConfig(architecture=arch, expansion=args.expansion, k=args.k, batch_size=args.batch_size,
                      seed=args.seed, model=args.model, hook=args.hook, plots=False, log_every=50,
                      dataset="../shared/corpus (train split)")
    t0 = time.perf_counter()
    sae = train_sae(x, cfg)
    target = cfg.resolved_target_l0 if arch in ("relu", "gated", "jumprelu") else float(args.k)
    return sae, time.perf_counter() - t0, target


def transcoder_row(lm, args, train_text: str, held_text: str, held_docs: list[str]) -> dict:
    """A skip transcoder of one MLP, trained by saescope on (input, output) pairs of the same text."""
    from saescope.train import TrainConfig, train_sae

    hook_in, hook_out = f"blocks.{args.transcoder_layer}.ln2.hook_normalized", f"blocks.{args.transcoder_layer}.hook_mlp_out"
    pairs = activations(lm, hook_in, train_text, args.tokens, seed=args.seed, target_hook=hook_out)
    held = activations(lm, hook_in, held_text, args.eval_tokens, seed=args.seed + 1, target_hook=hook_out)
    cfg = TrainConfig(architecture="batchtopk", expansion=args.expansion, k=args.k, batch_size=args.batch_size,
                      seed=args.seed, model=args.model, hook=hook_in, target_hook=hook_out, skip=True, plots=False,
                      log_every=50, dataset="../shared/corpus (train split)")
    load, t0 = os.getloadavg()[0], time.perf_counter()
    d_in = lm.hook_width(hook_in)
    sae = train_sae((pairs[:, :d_in], pairs[:, d_in:]), cfg)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        x, y = held[:, :d_in], held[:, d_in:]
        f, y_hat = sae.encode(x), sae(x)          # forward: decoder + skip path
        ev = 1 - float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    n = (pairs.shape[0] // args.batch_size) * args.batch_size
    return {"architecture": f"transcoder (skip, layer {args.transcoder_layer})", "library": "saescope",
            "target_l0": float(args.k), "d_sae": sae.d_sae, "l0": float((f > 0).sum(-1).float().mean()),
            "explained_variance": ev, "dead_fraction": float(1 - (f > 0).any(0).float().mean()),
            "ce_loss_recovered": ce_recovered(lm, sae, held_docs, args.ce_tokens, hook_in),
            "train_tokens": n, "train_seconds": round(seconds, 1), "tok_s": round(n / seconds), "load": round(load, 1),
            "within_20pct": abs(float((f > 0).sum(-1).float().mean()) - args.k) <= 0.2 * args.k}


SAELENS = {"relu": "standard", "topk": "topk", "batchtopk": "batchtopk", "jumprelu": "jumprelu", "gated": "gated",
           "matryoshka": "matryoshka_batchtopk"}


def train_saelens(arch: str, x: torch.Tensor, args):
    """SAELens's SAETrainer on the same activations (same order of batches), then loaded by saescope from the
    files SAELens saves; its activation normalisation (expected_average_only_in) is folded in by SAELens."""
    from sae_lens.config import LoggingConfig
    from sae_lens.saes.sae import TrainingSAE
    from sae_lens.training.sae_trainer import SAETrainer, SAETrainerConfig

    from saescope.sae import SAE

    d_in, d_sae, k = x.shape[1], x.shape[1] * args.expansion, args.k
    kw: dict = dict(d_in=d_in, d_sae=d_sae, device="cpu", normalize_activations="expected_average_only_in")
    if arch in ("topk", "batchtopk", "matryoshka"):
        kw["k"] = k
    if arch == "matryoshka":
        kw["matryoshka_widths"] = [d_sae // 16, d_sae // 4, d_sae]
    if arch == "jumprelu":
        kw.update(jumprelu_sparsity_loss_mode="quadratic", target_l0=float(k))
    sae = TrainingSAE.from_dict({"architecture": SAELENS[arch], **kw})
    B = args.batch_size
    steps = x.shape[0] // B

    def batches():
        g = torch.Generator().manual_seed(args.seed)
        while True:
            perm = torch.randperm(x.shape[0], generator=g)
            for s in range(steps):
                yield x[perm[s * B:(s + 1) * B]]

    cfg = SAETrainerConfig(total_training_samples=steps * B, train_batch_size_samples=B, lr=4e-4, lr_end=4e-5, device="cpu",
                           logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=4)
    t0 = time.perf_counter()
    trained = SAETrainer(cfg, sae, batches()).fit()
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_inference_model(tmp)
        ours = SAE.load(tmp)
    ours.cfg = ours.cfg.replace(metadata={"hook_name": args.hook, "model_name": args.model,
                                                   "prepend_bos": True})
    return ours, seconds, (float(k) if arch in ("topk", "batchtopk", "jumprelu", "matryoshka") else None)


def ce_recovered(lm, sae, held_docs: list[str], tokens: int, hook: str) -> float:
    from saescope.evals import evaluate_sae

    return float(evaluate_sae(lm, sae, held_docs, tokens=tokens, hook=hook, context_size=128).ce_loss_recovered)


def run_quality(args) -> list[dict]:
    from corpus import train_and_held_out

    from saescope.lm import LanguageModel

    lm = LanguageModel.from_pretrained(args.model)
    parts = train_and_held_out()
    train_text = "\n\n".join(t for t, _ in parts.values())
    held_text = "\n\n".join(h for _, h in parts.values())
    held_docs = [p for p in held_text.split("\n\n") if p.strip()]
    t0 = time.perf_counter()
    x = activations(lm, args.hook, train_text, args.tokens, seed=args.seed)
    x_eval = activations(lm, args.hook, held_text, args.eval_tokens, seed=args.seed + 1)
    logging.getLogger(__name__).info("harvested %d + %d activations in %.0fs", len(x), len(x_eval),
                                     time.perf_counter() - t0)
    jobs = [(arch, "saescope", train_saescope) for arch in args.archs if arch in ARCHS]
    if not args.no_saelens:
        jobs += [(arch, "SAELens 6.54", train_saelens) for arch in args.archs if arch in SAELENS]
    rows = []
    for arch, lib, fn in jobs:
        load = os.getloadavg()[0]
        sae, seconds, target = fn(arch, x, args)
        row = {"architecture": arch, "library": lib, "target_l0": target, "d_sae": sae.d_sae,
               **held_out_metrics(sae, x_eval),
               "ce_loss_recovered": ce_recovered(lm, sae, held_docs, args.ce_tokens, args.hook),
               "train_tokens": (x.shape[0] // args.batch_size) * args.batch_size, "train_seconds": round(seconds, 1),
               "tok_s": round((x.shape[0] // args.batch_size) * args.batch_size / seconds), "load": round(load, 1)}
        if target:
            row["within_20pct"] = abs(row["l0"] - target) <= 0.2 * target
        rows.append(row)
        logging.getLogger(__name__).info("%s", row)
    if "transcoder" in args.archs:
        rows.append(transcoder_row(lm, args, train_text, held_text, held_docs))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| architecture | trainer | target L0 | L0 | EV | CE loss rec. | dead | tok/s (load) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tgt = f"{r['target_l0']:g}" if r["target_l0"] else "-"
        ok = "" if r.get("within_20pct") in (None, True) else " (off target)"
        lines.append(f"| {r['architecture']} | {r['library']} | {tgt} | {r['l0']:.1f}{ok} | {r['explained_variance']:.3f} | "
                     f"{r['ce_loss_recovered']:.3f} | {100 * r['dead_fraction']:.1f}% | {r['tok_s']:,} ({r['load']}) |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--hook", default="blocks.2.hook_resid_pre")
    ap.add_argument("--tokens", type=int, default=200_000, help="training activations (one pass)")
    ap.add_argument("--eval-tokens", type=int, default=20_000)
    ap.add_argument("--ce-tokens", type=int, default=8192, help="held-out tokens for CE loss recovered")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS) + ["transcoder"])
    ap.add_argument("--transcoder-layer", type=int, default=1)
    ap.add_argument("--expansion", type=int, default=4)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-saelens", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run_quality(args)
    print(json.dumps(rows) if args.json else table(rows))


if __name__ == "__main__":
    main()
