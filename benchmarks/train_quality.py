"""Quality check: train TopK and ReLU SAEs on real activations of a model and report held-out EV / L0 / dead.

    python benchmarks/train_quality.py                       # bundled tiny model, blocks.2.hook_resid_pre
    python benchmarks/train_quality.py --tokens 2000000 --archs topk relu --json

Text: ../shared/corpus via scripts/corpus.py (train split for training, the held-out 5% for evaluation).
Activations are harvested once into memory (BOS/EOS excluded), each SAE is trained with saescope.train_sae,
then evaluated on held-out activations: explained variance about the mean, L0, and the dead fraction
(latents that never fire on the held-out tokens). Goal: EV >= 0.85 with <= 10% dead.
The lead can reuse ``run_quality(...)`` (returns a list of dicts) or the saved SAEs (--out).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def activations(lm, hook: str, text: str, tokens: int, context_size: int = 128, seed: int = 0) -> torch.Tensor:
    """Held-in or held-out activations [tokens, d_in] of one long text (cut into paragraphs as documents)."""
    from saescope.data import ActivationStream, token_contexts

    docs = [p for p in text.split("\n\n") if p.strip()]
    contexts = token_contexts(lm, docs, context_size, prepend_bos=True, seed=seed)
    stream = ActivationStream(lm, hook, contexts, batch_size=4096, buffer_tokens=1 << 17, seed=seed,
                              harvest_batch_size=32)
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
    fired = (f > 0).any(0)
    return {"explained_variance": ev, "l0": float((f > 0).sum(-1).float().mean()),
            "dead_fraction": float(1 - fired.float().mean()), "eval_tokens": int(x.shape[0])}


def run_quality(model="tiny", hook="blocks.2.hook_resid_pre", tokens=1_000_000, eval_tokens=100_000,
                archs=("topk", "relu"), expansion=8, k=32, epochs_tokens=None, out=None, seed=0) -> list[dict]:
    from corpus import train_and_held_out

    from saescope.lm import LanguageModel
    from saescope.train import TrainConfig, train_sae

    lm = LanguageModel.from_pretrained(model)
    parts = train_and_held_out()
    train_text = "\n\n".join(t for t, _ in parts.values())
    held_text = "\n\n".join(h for _, h in parts.values())
    t0 = time.perf_counter()
    x = activations(lm, hook, train_text, tokens, seed=seed)
    x_eval = activations(lm, hook, held_text, eval_tokens, seed=seed + 1)
    harvest_s = time.perf_counter() - t0
    results = []
    for arch in archs:
        kw = dict(architecture=arch, expansion=expansion, k=k, batch_size=4096,
                  total_tokens=epochs_tokens or 4 * x.shape[0], seed=seed, model=model, hook=hook,
                  dataset="../shared/corpus (train split)", plots=out is not None, log_every=50,
                  dead_after_tokens=500_000)
        if arch == "relu":
            kw.update(lr=4e-4, l1_coefficient=5.0)
        t1 = time.perf_counter()
        sae = train_sae(x, TrainConfig(**kw), out_dir=(Path(out) / arch) if out else None)
        row = {"architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "train_tokens": kw["total_tokens"],
               "distinct_tokens": int(x.shape[0]), "train_seconds": round(time.perf_counter() - t1, 1),
               "harvest_seconds": round(harvest_s, 1), **held_out_metrics(sae, x_eval)}
        results.append(row)
        logging.getLogger(__name__).info("%s", row)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--hook", default="blocks.2.hook_resid_pre")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="distinct training activations harvested")
    ap.add_argument("--train-tokens", type=int, default=None, help="total training tokens (default 4 epochs)")
    ap.add_argument("--eval-tokens", type=int, default=100_000)
    ap.add_argument("--archs", nargs="+", default=["topk", "relu"])
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--out", default=None, help="save the SAEs, metrics and plots here")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = run_quality(args.model, args.hook, args.tokens, args.eval_tokens, args.archs, args.expansion, args.k,
                       args.train_tokens, args.out)
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            ok = r["explained_variance"] >= 0.85 and r["dead_fraction"] <= 0.10
            print(f"{r['architecture']:6s} d_sae {r['d_sae']:6d}  EV {r['explained_variance']:.3f}  L0 {r['l0']:6.1f}  "
                  f"dead {100 * r['dead_fraction']:5.1f}%  train {r['train_seconds']}s  {'OK' if ok else 'below goal'}")


if __name__ == "__main__":
    main()
