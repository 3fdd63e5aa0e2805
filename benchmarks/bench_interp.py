"""Steered generation speed: saescope vs TransformerLens + SAELens, side by side in one run.

A random GPT-2-small-shaped model (12 layers, d_model 768, 12 heads; vocab 4,096 from the bundled tokenizer) and a
24,576-latent ReLU SAE with centring on blocks.6.hook_resid_pre. Greedy generation of --new tokens with:
  add    x += s * W_dec[f]                                  (no SAE pass)
  clamp  x += decode(f') - decode(f), error term kept       (one SAE encode + two decodes per step)
saescope: ``generate_steered(..., include_baseline=False)`` (HF KV cache + hook).
peer: ``HookedTransformer.generate`` (KV cache) with a hook doing the same edit with a SAELens SAE.
Also checks that both produce the same tokens.

    python benchmarks/bench_interp.py [--new 32] [--repeats 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpt2_pair import gpt2_small_pair  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    from sae_lens.saes.sae import SAEMetadata as SLMeta
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    from saescope.interp import Intervention, generate_steered
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    hook, feat, strength = "blocks.6.hook_resid_pre", 123, 4.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-interp-"))
    try:
        lm, tl = gpt2_small_pair(tmp)
        sae = SAE(SAEConfig("relu", d_in=768, d_sae=args.d_sae, input_transform="center",
                            metadata=SAEMetadata(hook_name=hook)))
        with torch.no_grad():
            sae.b_enc.fill_(-0.05)
        sl = StandardSAE(StandardSAEConfig(d_in=768, d_sae=args.d_sae, apply_b_dec_to_input=False,
                                           metadata=SLMeta(hook_name=hook)))
        sl.load_state_dict({n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")})
        d = sae.W_dec[feat].detach()

        def tl_add(act, hook):
            return act + strength * d

        def tl_clamp(act, hook):
            mu = act.mean(-1, keepdim=True)          # the centring, by hand, for the SAELens SAE
            f = sl.encode(act - mu)
            f2 = f.clone()
            f2[..., feat] = strength
            return act + sl.decode(f2) - sl.decode(f)

        prompt = "The quick brown fox"
        ids = lm.to_tokens(prompt)
        rows = []
        for method, tl_fn in [("add", tl_add), ("clamp", tl_clamp)]:
            iv = Intervention(feat, method, strength)
            best = {"saescope": float("inf"), "TL+SAELens": float("inf")}
            out = {}
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                res = generate_steered(lm, sae, prompt, [iv], max_new_tokens=args.new, temperature=0,
                                       include_baseline=False)
                best["saescope"] = min(best["saescope"], time.perf_counter() - t0)
                out["saescope"] = res.steered_ids
                t0 = time.perf_counter()
                with torch.no_grad(), tl.hooks(fwd_hooks=[(hook, tl_fn)]):
                    toks = tl.generate(ids, max_new_tokens=args.new, do_sample=False, use_past_kv_cache=True,
                                       verbose=False, stop_at_eos=False, prepend_bos=False)
                best["TL+SAELens"] = min(best["TL+SAELens"], time.perf_counter() - t0)
                out["TL+SAELens"] = toks[0, ids.shape[1]:].tolist()
            same = out["saescope"] == out["TL+SAELens"]
            rows.append((method, args.new / best["saescope"], args.new / best["TL+SAELens"],
                         best["TL+SAELens"] / best["saescope"], same))
        print(f"{'method':8} {'saescope tok/s':>15} {'TL+SAELens tok/s':>17} {'ratio':>7}  same tokens")
        for method, a, b, r, same in rows:
            print(f"{method:8} {a:15.2f} {b:17.2f} {r:7.2f}x  {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
