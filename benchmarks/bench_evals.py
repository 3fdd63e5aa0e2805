"""SAE evaluation speed: saescope ``evaluate_sae`` vs SAELens's eval functions, side by side in one run.

A random GPT-2-small-shaped model (12 layers, d_model 768; vocab 4,096 from the bundled tokenizer) and a ReLU SAE
(d_sae --d-sae) on blocks.6.hook_resid_pre, the same --tokens token contexts for both.
saescope: ``evaluate_sae`` = one early-stopped pass (reconstruction, density, mean) + 4 full forwards per batch
(clean, SAE, zero-ablation, mean-ablation).
peer: SAELens 6.54 ``get_sparsity_and_variance_metrics`` (one early-stopped pass) + ``get_downstream_reconstruction_metrics``
(3 full forwards per batch: clean, SAE, zero-ablation) on a TransformerLens model of the same weights.
Prints both times, the ratio, the ratio per full forward, and the shared metrics side by side.

    python benchmarks/bench_evals.py [--tokens 2048] [--d-sae 24576] [--batch 8] [--threads 2] [--repeats 1]
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


class _Store:
    def __init__(self, ids, batch):
        self.batches = [ids[i:i + batch] for i in range(0, len(ids), batch)]
        self.i = 0

    def get_batch_tokens(self, n):
        out = self.batches[self.i % len(self.batches)]
        self.i += 1
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="alternate the two runs this many times; report the minimum")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    from sae_lens.evals import get_downstream_reconstruction_metrics, get_sparsity_and_variance_metrics
    from sae_lens.saes.sae import SAEMetadata as SLMeta
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.training.activation_scaler import ActivationScaler

    from saescope.evals import evaluate_sae
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    hook = "blocks.6.hook_resid_pre"
    tmp = Path(tempfile.mkdtemp(prefix="bench-evals-"))
    try:
        lm, tl = gpt2_small_pair(tmp)
        sae = SAE(SAEConfig("relu", d_in=768, d_sae=args.d_sae, metadata=SAEMetadata(hook_name=hook)))
        n = -(-args.tokens // args.context)
        ids = torch.randint(1, 4096, (n, args.context), generator=torch.Generator().manual_seed(1))
        ids[:, 0] = 0
        with torch.no_grad():  # a per-latent threshold giving L0 ≈ 64, so the SAE part is realistic
            x = lm.run(ids[: args.batch], capture=hook)[hook][:, 1:].reshape(-1, 768)
            pre = x @ sae.W_enc
            sae.b_enc.copy_(-torch.quantile(pre, 1 - 64 / args.d_sae, dim=0))
            sae.W_dec.mul_(x.norm(dim=-1).mean() / 8)
        sl = StandardSAE(StandardSAEConfig(d_in=768, d_sae=args.d_sae, apply_b_dec_to_input=False,
                                           metadata=SLMeta(hook_name=hook)))
        sl.load_state_dict({n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")})

        n_batches = -(-n // args.batch)

        t_ours = t_peer = float("inf")
        for _ in range(args.repeats):  # alternate, so that load changes hit both sides alike
            t = time.perf_counter()
            ours = evaluate_sae(lm, sae, ids, tokens=args.tokens, batch_size=args.batch)
            t_ours = min(t_ours, time.perf_counter() - t)

            t = time.perf_counter()
            recon, _ = get_sparsity_and_variance_metrics(
                sl, tl, _Store(ids, args.batch), ActivationScaler(), n_batches=n_batches, compute_l2_norms=True,
                compute_sparsity_metrics=True, compute_variance_metrics=True,
                compute_featurewise_density_statistics=True, eval_batch_size_prompts=args.batch, model_kwargs={},
                ignore_tokens=[0])
            down = get_downstream_reconstruction_metrics(
                sl, tl, _Store(ids, args.batch), ActivationScaler(), compute_kl=True, compute_ce_loss=True,
                n_batches=n_batches, eval_batch_size_prompts=args.batch, ignore_tokens=[0])
            t_peer = min(t_peer, time.perf_counter() - t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"tokens {n * args.context}, batch {args.batch}, d_sae {args.d_sae}, threads {args.threads}, "
          f"best of {args.repeats}")
    print(f"saescope evaluate_sae      {t_ours:8.2f} s   (4 full forwards/batch + early-stopped pass)")
    print(f"SAELens evals              {t_peer:8.2f} s   (3 full forwards/batch + early-stopped pass)")
    print(f"speed ratio (peer / ours)  {t_peer / t_ours:8.2f}x   per full forward: {t_peer / 3 / (t_ours / 4):.2f}x")
    for ours_key, theirs in [("explained_variance", recon["explained_variance"]), ("l0", recon["l0"]),
                             ("ce_loss_recovered", down["ce_loss_score"]), ("kl_score", down["kl_div_score"])]:
        print(f"  {ours_key:<20} saescope {getattr(ours, ours_key):.6f}   SAELens {theirs:.6f}")


if __name__ == "__main__":
    main()
