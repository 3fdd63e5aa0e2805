"""Training throughput: saescope vs sparsify and SAELens, side by side in one run (CPU, activations in memory).

    python benchmarks/bench_train.py                 # d_in 768, d_sae 12288 (16x), k 32, batch 4096
    python benchmarks/bench_train.py --steps 5 --threads 2

Prints tokens/s for a TopK step (forward, backward, clip, Adam) of each library (sparsify: eai-sparsify 1.3.3's
Trainer step: forward with the dead mask, FVU (+ AuxK once latents die) backward, decoder-gradient projection, Adam,
unit decoder rows), a ReLU+L1 step of saescope and SAELens, the
ratios, the dense fp32 matmul rate measured in the same run, and the GFLOP/s the saescope TopK step achieves
(useful work: 2*B*d_in*d_sae for the encoder matmul + 10*B*k*d_in for the sparse parts).
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch


def dense_matmul_gflops(B, d_in, d_sae, reps=3) -> float:
    a, b = torch.randn(B, d_in), torch.randn(d_in, d_sae)
    a @ b
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        t.append(time.perf_counter() - t0)
    return 2 * B * d_in * d_sae / min(t) / 1e9


def saescope_step_times(arch, data, d_sae, k, B, steps) -> list[float]:
    from saescope.train import TrainConfig, train_sae

    times, last = [], [None]

    def cb(step, metrics):
        now = time.perf_counter()
        if last[0] is not None:
            times.append(now - last[0])
        last[0] = now

    cfg = TrainConfig(architecture=arch, d_sae=d_sae, k=k, batch_size=B, total_tokens=B * (steps + 1),
                      log_every=10_000, ortho_every=0, plots=False, init_sample_tokens=1024, device="cpu")
    train_sae(data, cfg, callback=cb)
    return times


def saelens_step_times(arch, data, d_sae, k, B, steps) -> list[float]:
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    d_in = data.shape[1]
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, device="cpu"))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=5.0, device="cpu"))
    opt = torch.optim.Adam(sae.parameters(), lr=4e-4)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    coeffs = {name: (c.value if hasattr(c, "value") else c) for name, c in sae.get_coefficients().items()}
    times = []
    for step in range(steps + 1):
        x = data[(step * B) % data.shape[0]:][:B]
        t0 = time.perf_counter()
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coeffs, dead_neuron_mask=dead,
                                                       n_training_steps=step, is_logging_step=False))
        with torch.no_grad():  # the same per-step bookkeeping SAELens's trainer does
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            dead = dead & ~did_fire
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        if step:
            times.append(time.perf_counter() - t0)
    return times


def sparsify_step_times(arch, data, d_sae, k, B, steps) -> list[float]:
    from sparsify import SparseCoder, SparseCoderConfig

    d_in = data.shape[1]
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device="cpu", dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=4e-4)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    times = []
    for step in range(steps + 1):
        x = data[(step * B) % data.shape[0]:][:B]
        t0 = time.perf_counter()
        out = sae(x, dead_mask=dead)
        loss = out.fvu + (out.auxk_loss if out.auxk_loss is not None else 0)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
        if step:
            times.append(time.perf_counter() - t0)
    return times


def relu_sparse_regime(data, d_sae, B, steps, density=0.01) -> tuple[float, float]:
    """ReLU+L1 once training has made activations sparse (b_enc set so ~1% of latents fire), both libraries on
    the same weights: (saescope step seconds, SAELens step seconds). saescope's step here is the trainer's step
    body (loss, backward, clip, fused Adam) on its TrainableSAE."""
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    from saescope.train import TrainConfig
    from saescope.train.losses import TrainableSAE
    from saescope.train.monitor import adam as _adam

    d_in = data.shape[1]
    cfg = TrainConfig(architecture="relu", d_sae=d_sae, batch_size=B, apply_b_dec_to_input=True)
    model = TrainableSAE(cfg, d_in, torch.Generator().manual_seed(0))
    x0 = data[:B]
    with torch.no_grad():
        pre = x0 @ model.W_enc_T.t()
        model.b_enc.copy_(-torch.quantile(pre[:512].flatten(), 1 - density))
        del pre
    opt = _adam(list(model.parameters()), cfg, torch.device("cpu"))
    ours = []
    for step in range(steps + 1):
        x = data[(step * B) % data.shape[0]:][:B]
        t0 = time.perf_counter()
        out = model.loss(x, None)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        opt.step()
        if step:
            ours.append(time.perf_counter() - t0)
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=5.0, device="cpu"))
    with torch.no_grad():
        sae.W_enc.copy_(model.W_enc_T.t())
        sae.W_dec.copy_(model.W_dec)
        sae.b_enc.copy_(model.b_enc)
        sae.b_dec.copy_(model.b_dec)
    opt2 = torch.optim.Adam(sae.parameters(), lr=4e-4)
    theirs = []
    for step in range(steps + 1):
        x = data[(step * B) % data.shape[0]:][:B]
        t0 = time.perf_counter()
        o = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l1": 5.0}, dead_neuron_mask=None,
                                                     n_training_steps=step, is_logging_step=False))
        o.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt2.step()
        opt2.zero_grad()
        if step:
            theirs.append(time.perf_counter() - t0)
    return statistics.median(ours), statistics.median(theirs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-relu", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    B, d_in, k = args.batch, args.d_in, args.k
    d_sae = d_in * args.expansion
    torch.manual_seed(0)
    data = torch.randn(B * 4, d_in) + 0.5 * torch.randn(d_in)
    print(f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; d_in {d_in}, d_sae {d_sae}, k {k}, "
          f"batch {B}, {args.steps} timed steps each (median)")
    gf_dense = dense_matmul_gflops(B, d_in, d_sae)
    print(f"dense fp32 matmul [{B}x{d_in}]@[{d_in}x{d_sae}]: {gf_dense:.1f} GFLOP/s")
    rows = {}
    archs = ["topk"] + ([] if args.skip_relu else ["relu"])
    for arch in archs:
        libs = [("saescope", saescope_step_times), ("SAELens", saelens_step_times)]
        if arch == "topk":
            libs.insert(1, ("sparsify", sparsify_step_times))
        for lib, fn in libs:
            t = statistics.median(fn(arch, data, d_sae, k, B, args.steps))
            rows[(arch, lib)] = t
            print(f"{arch:5s} {lib:9s} {t * 1000:8.0f} ms/step  {B / t:8.0f} tok/s", flush=True)
    print(f"topk: saescope / sparsify throughput = {rows[('topk', 'sparsify')] / rows[('topk', 'saescope')]:.2f}x")
    for arch in archs:
        ratio = rows[(arch, "SAELens")] / rows[(arch, "saescope")]
        print(f"{arch}: saescope / SAELens throughput = {ratio:.2f}x")
    if not args.skip_relu:
        ours, theirs = relu_sparse_regime(data, d_sae, B, args.steps)
        print(f"relu, sparse regime (~1% active): saescope {B / ours:.0f} tok/s, SAELens {B / theirs:.0f} tok/s, "
              f"ratio {theirs / ours:.2f}x", flush=True)
    t = rows[("topk", "saescope")]
    flops = 2 * B * d_in * d_sae + 10 * B * k * d_in
    gf = flops / t / 1e9
    print(f"saescope topk step: {gf:.1f} GFLOP/s of useful work = {gf / gf_dense:.2f} of the dense matmul rate "
          f"(limit: the encoder matmul alone, {B / (2 * B * d_in * d_sae / (gf_dense * 1e9)):.0f} tok/s)")


if __name__ == "__main__":
    main()
