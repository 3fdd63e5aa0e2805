"""Feature statistics throughput: one streaming pass over N tokens, all features at once.

    python benchmarks/bench_report.py [--tokens 200000] [--model tiny] [--sae tiny:resid2-topk]

Prints, side by side in one run: the bare cost of the forward pass + SAE encode (the floor), the full statistics
pass (top-k contexts, interval reservoir, density, histogram, co-firing, logit lens, store write), and a naive
per-feature baseline (what a per-feature loop over the cached activations costs, extrapolated from a sample of
features). Without the bundled weights it builds a random model of the same shape (GPT-2, 4 layers, d_model 256,
vocab 4096) and a random TopK SAE (d_sae 4096, k 32) at blocks.2.hook_resid_pre.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def load(args):
    from saescope.lm import LanguageModel
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    try:
        lm = LanguageModel.from_pretrained(args.model)
    except Exception as exc:  # bundled weights not there yet: same shape, random
        print(f"(model {args.model} unavailable: {exc}; using a random GPT-2 of the tiny model's shape)")
        from transformers import GPT2Config, GPT2LMHeadModel

        from saescope.assets import tiny_model_dir

        torch.manual_seed(0)
        d = Path(tempfile.mkdtemp()) / "tiny-random"
        GPT2LMHeadModel(GPT2Config(vocab_size=4096, n_positions=256, n_embd=256, n_layer=4, n_head=4)).save_pretrained(d)
        for f in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
            (d / f).write_bytes((tiny_model_dir() / f).read_bytes())
        lm = LanguageModel.from_pretrained(str(d))
    try:
        sae = SAE.from_spec(args.sae)
    except Exception as exc:
        print(f"(SAE {args.sae} unavailable: {exc}; using a random TopK SAE d_sae 4096, k 32)")
        cfg = SAEConfig("topk", d_in=lm.info.d_model, d_sae=4096, k=32,
                        metadata=SAEMetadata(model_name=lm.name, hook_name="blocks.2.hook_resid_pre"))
        sae = SAE(cfg, seed=0)
    return lm, sae


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--sae", default="tiny:resid2-topk")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--naive-features", type=int, default=32, help="features timed in the per-feature baseline")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from saescope.report import StatsConfig, compute_feature_stats
    from saescope.site import attach

    lm, sae = load(args)
    if sae.dtype != torch.float32:     # as compute_feature_stats does on the CPU: half matmuls are slow there
        path, sae = sae.path, sae.float()
        sae.path = path
    ctx = 128
    n = args.tokens // ctx
    g = torch.Generator().manual_seed(0)
    corpus = torch.randint(1, lm.info.d_vocab, (n, ctx), generator=g)
    corpus[:, 0] = lm.info.bos_token_id if lm.info.bos_token_id is not None else 0
    print(f"model {lm.name} · SAE d_in {sae.d_in} d_sae {sae.d_sae} · {n * ctx:,} tokens · {torch.get_num_threads()} threads")

    # 1. floor: forward + encode only
    t0 = time.perf_counter()
    acts = []
    with torch.no_grad():
        for s in range(0, n, args.batch_size):
            f = attach(lm, sae).features(corpus[s:s + args.batch_size])
            if len(acts) < 4:
                acts.append(f.clone())
    floor = time.perf_counter() - t0
    print(f"forward + encode only      {n * ctx / floor:9.0f} tok/s   ({floor:.1f} s)")

    # 2. the full statistics pass, written to a store
    with tempfile.TemporaryDirectory() as tmp:
        cfg = StatsConfig(n_tokens=n * ctx, context_size=ctx, batch_size=args.batch_size)
        t0 = time.perf_counter()
        stats = compute_feature_stats(lm, sae, corpus, cfg, out=Path(tmp) / "features.sqlite")
        total = time.perf_counter() - t0
        size = (Path(tmp) / "features.sqlite").stat().st_size
    print(f"statistics pass (streamed) {stats.n_tokens / stats.seconds:9.0f} tok/s   ({stats.seconds:.1f} s), "
          f"{total:.1f} s with logit lens + store ({size / 1e6:.1f} MB)")

    # 3. naive per-feature loop over cached activations (top-k + histogram + density, one feature at a time)
    f = torch.cat(acts).reshape(-1, sae.d_sae)
    t0 = time.perf_counter()
    for j in range(args.naive_features):
        col = f[:, j].contiguous()
        col.topk(16)
        nz = col[col > 0]
        torch.histc(nz.log10(), bins=40, min=-3, max=3)
        (col > 0).float().mean()
    per_feat = (time.perf_counter() - t0) / args.naive_features / f.shape[0]     # s per feature per token
    naive_rate = 1.0 / (per_feat * sae.d_sae)
    print(f"naive per-feature loop     {naive_rate:9.0f} tok/s   (aggregation only, extrapolated from "
          f"{args.naive_features} features; excludes the forward pass)")
    print(f"ratio: streamed stats / (forward+encode floor) = {floor / stats.seconds:.2f}; "
          f"streamed aggregation vs naive per-feature aggregation ≈ "
          f"{(1 / max(1e-9, stats.seconds - floor) * stats.n_tokens) / naive_rate:.1f}x")


if __name__ == "__main__":
    main()
