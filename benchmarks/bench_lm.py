"""Steered generation and early exit: saescope.lm vs TransformerLens, side by side in one run.

A GPT-2-small-shaped model (12 layers, d_model 768, vocab 50257) with random weights, built locally and
published into a temporary offline hub cache as "gpt2" so that TransformerLens can load the same weights.

    python benchmarks/bench_lm.py [--new-tokens 32] [--repeats 2] [--threads 2] [--no-tl]

Prints tokens/s for each, the ratios, and whether the generated tokens are identical. saescope and HF generate are
timed alternately (ours, HF, ours, HF, ...) so that a busy machine slows both alike; best and median are printed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_HF_HOME = Path(tempfile.mkdtemp(prefix="saescope-bench-hf-"))
os.environ.update(HF_HOME=str(_HF_HOME), HF_HUB_CACHE=str(_HF_HOME / "hub"), HF_HUB_OFFLINE="1",
                  TRANSFORMERS_OFFLINE="1", SAESCOPE_NO_PROGRESS="1", TOKENIZERS_PARALLELISM="false")
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from hubcache import add_model_dir  # noqa: E402

TOKENIZER = ROOT / "src" / "saescope" / "assets" / "tiny" / "model"
PROMPT = "The history of the city begins with a small settlement on the river, where"


def build_model(workdir: Path) -> str:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_ctx=1024, n_embd=768, n_layer=12, n_head=12,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():   # larger weights than the init so the random model's greedy path is not constant
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(3.0)
    out = workdir / "gpt2-small-random"
    model.save_pretrained(out, safe_serialization=True)
    for name in ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(TOKENIZER / name, out / name)
    add_model_dir(_HF_HOME / "hub", "gpt2", out)
    return "gpt2"


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-tl", action="store_true", help="skip TransformerLens (only saescope vs HF generate)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformer_lens import HookedTransformer

    from saescope.lm import LanguageModel

    work = Path(tempfile.mkdtemp(prefix="saescope-bench-"))
    try:
        name = build_model(work)
        lm = LanguageModel.from_pretrained(name, device="cpu")
        tl = None if args.no_tl else HookedTransformer.from_pretrained_no_processing(
            name, hf_model=lm.hf_model, tokenizer=lm.tokenizer, device="cpu", dtype=torch.float32).eval()
        tokens = lm.to_tokens(PROMPT)
        vec = torch.randn(lm.info.d_model, generator=torch.Generator().manual_seed(1)) * 4.0
        hook = "blocks.6.hook_resid_pre"
        n = args.new_tokens

        def ours():
            with lm.intervene({hook: lambda a: a + vec}):
                return lm.generate(tokens, max_new_tokens=n)

        def theirs():
            with tl.hooks(fwd_hooks=[(hook, lambda a, hook: a + vec)]):
                return tl.generate(tokens, max_new_tokens=n, do_sample=False, use_past_kv_cache=True,
                                   stop_at_eos=False, verbose=False)

        def hf_generate():   # plain HF generate with a forward pre-hook doing the same edit
            block = lm.hf_model.transformer.h[6]
            h = block.register_forward_pre_hook(lambda m, a: (a[0] + vec, *a[1:]))
            try:
                with torch.no_grad():
                    return lm.hf_model.generate(tokens, max_new_tokens=n, do_sample=False, min_new_tokens=n,
                                                pad_token_id=0)
            finally:
                h.remove()

        ours(), hf_generate()   # warm-up
        runs_ours, runs_hf = [], []
        for _ in range(args.repeats):         # alternate, so load on a shared machine hits both alike
            t, out_ours = best_of(ours, 1)
            runs_ours.append(t)
            t, out_hf = best_of(hf_generate, 1)
            runs_hf.append(t)
        t_ours, t_hf = min(runs_ours), min(runs_hf)
        median = sorted(runs_hf)[len(runs_hf) // 2] / sorted(runs_ours)[len(runs_ours) // 2]
        t_tl, out_tl = best_of(theirs, args.repeats) if not args.no_tl else (float("nan"), None)
        with torch.no_grad():
            unsteered = lm.generate(tokens, max_new_tokens=n)

        batch = torch.randint(0, 4096, (4, 128), generator=torch.Generator().manual_seed(2))
        lm(batch)
        t_early, _ = best_of(lambda: lm.run(batch, capture="blocks.2.hook_resid_pre"), 3 * args.repeats)
        t_full, _ = best_of(lambda: lm(batch), 3 * args.repeats)
        with torch.no_grad():
            t_tl_full, _ = best_of(lambda: tl(batch), 3 * args.repeats) if not args.no_tl else (float("nan"), 0)
            t_tl_cache, _ = (best_of(lambda: tl.run_with_cache(batch, names_filter=["blocks.2.hook_resid_pre"]),
                                     3 * args.repeats) if not args.no_tl else (float("nan"), 0))

        print(f"model: GPT-2-small shape (12 x 768, vocab 50257), random weights; prompt {tokens.shape[1]} tokens; "
              f"{n} greedy new tokens with an additive hook at {hook}; threads {args.threads}; best of {args.repeats}")
        print(f"  saescope generate      {n / t_ours:7.2f} tok/s")
        print(f"  TransformerLens        {n / t_tl:7.2f} tok/s")
        print(f"  HF generate + hook     {n / t_hf:7.2f} tok/s")
        print(f"  speed-up vs TL         {t_tl / t_ours:7.2f}x   (target >= 4x)")
        print(f"  speed-up vs HF generate {t_hf / t_ours:6.2f}x best, {median:.2f}x median of {args.repeats} alternating runs")
        same_tl = torch.equal(out_ours, out_tl) if out_tl is not None else "skipped"
        print(f"  same tokens as TL: {same_tl}; as HF generate: {torch.equal(out_ours, out_hf)}; "
              f"steering changed the output: {not torch.equal(out_ours, unsteered)}")
        print(f"early exit, [4, 128] tokens: capture blocks.2.hook_resid_pre {t_early * 1e3:.0f} ms vs full forward "
              f"{t_full * 1e3:.0f} ms -> {t_early / t_full:.2f} of a forward ({t_full / t_early:.1f}x faster)")
        print(f"  TL run_with_cache(names_filter=blocks.2) {t_tl_cache * 1e3:.0f} ms, TL forward {t_tl_full * 1e3:.0f} ms "
              f"-> saescope capture is {t_tl_cache / t_early:.1f}x faster than TL's")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(_HF_HOME, ignore_errors=True)


if __name__ == "__main__":
    main()
