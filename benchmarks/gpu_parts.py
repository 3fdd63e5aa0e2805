"""The parts of the GPU benchmark (see gpu_bench.py): each returns a JSON-able dict of rows."""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from gpu_bench import Peak, device, load_lm, make_sae, resident_bytes, sync, timed

PROMPT = "The history of the city begins with a small settlement on the river, where"


def _budget():
    from saescope.plan import Budget

    return Budget(1 << 50, 1 << 50, "cuda", "unbounded (estimate only)")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ------------------------------------------------------------------------------------------------- kernels
def part_kernels(work: Path, S: dict) -> dict:
    """The Triton kernels of the sparse TopK path against the PyTorch path: both products, then the gradients of
    a whole TopK (+AuxK) loss; times of each path."""
    from saescope.train import sparse, triton_topk
    from saescope.train import TrainConfig
    from saescope.train.losses import TrainableSAE

    dev = device()
    if not triton_topk.available():
        return {"skipped": "Triton is not installed (the PyTorch path is used)", "ok": True, "rows": []}
    before = os.environ.get("SAESCOPE_TRITON")
    mode = "interpret" if dev.type == "cpu" else (before or "1")
    os.environ["SAESCOPE_TRITON"] = mode
    if triton_topk.dispatch(torch.zeros(1, device=dev)) is None:
        return {"skipped": "on a CPU the kernels run only under TRITON_INTERPRET=1 SAESCOPE_TRITON=interpret",
                "ok": True, "rows": []}
    B, D, d, k = S["kernel_batch"], S["kernel_d_sae"], S["n_embd"], S["k"]
    gen = torch.Generator(device=dev).manual_seed(0)
    pattern, vals = sparse.topk_pattern(torch.randn(B, D, device=dev, generator=gen), k)
    G = torch.randn(B, d, device=dev, generator=gen)
    W = torch.randn(D, d, device=dev, generator=gen)
    rows = []

    def both(fn, reps):
        out = {}
        for label, m in (("triton", mode), ("pytorch", "0")):
            os.environ["SAESCOPE_TRITON"] = m
            fn()
            out[label] = timed(fn, dev, reps)
        os.environ["SAESCOPE_TRITON"] = mode
        return out

    reps = 5 if dev.type == "cuda" else 1
    for name, fn in (("sampled (g @ W_dec^T at the active entries)", lambda: pattern.sampled(G, W)),
                     ("A^T @ X (W_dec / W_enc gradients)", lambda: pattern.t_matmul(vals, G))):
        r = both(fn, reps)
        rows.append({"name": name, "triton_ms": r["triton"][0] * 1e3, "pytorch_ms": r["pytorch"][0] * 1e3,
                     "rel_err": _rel(r["triton"][1], r["pytorch"][1])})
    x = torch.randn(B, d, device=dev, generator=gen)
    dead = torch.zeros(D, dtype=torch.bool, device=dev)
    dead[::7] = True

    def grads():
        model = TrainableSAE(TrainConfig(architecture="topk", d_sae=D, k=k, batch_size=B), d,
                             torch.Generator().manual_seed(1), device=dev)
        model.loss(x, dead).loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    r = both(grads, 1)
    os.environ.pop("SAESCOPE_TRITON") if before is None else os.environ.__setitem__("SAESCOPE_TRITON", before)
    for n in r["pytorch"][1]:
        rows.append({"name": f"TopK+AuxK loss gradient {n}", "rel_err": _rel(r["triton"][1][n], r["pytorch"][1][n])})
    rows.append({"name": "whole forward+backward", "triton_ms": r["triton"][0] * 1e3, "pytorch_ms": r["pytorch"][0] * 1e3})
    ok = all(row.get("rel_err", 0.0) <= 1e-5 for row in rows)
    return {"ok": ok, "rows": rows, "shape": dict(batch=B, d_sae=D, d_in=d, k=k), "mode": mode}


# ------------------------------------------------------------------------------------------------- generation
def _transformer_lens(lm, dev):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    i = lm.info
    cfg = HookedTransformerConfig(n_layers=i.n_layers, d_model=i.d_model, n_ctx=i.n_ctx, d_head=i.d_head,
                                  n_heads=i.n_heads, d_mlp=i.d_mlp, d_vocab=i.d_vocab, act_fn="gelu_new",
                                  normalization_type="LN", device=str(dev))
    tl = HookedTransformer(cfg, tokenizer=lm.tokenizer)
    tl.load_state_dict(convert_gpt2_weights(lm.hf_model, cfg), strict=False)
    return tl.to(dev).eval()


def part_generate(work: Path, S: dict) -> dict:
    """Greedy steered generation: an SAE feature's decoder direction added at the hook at every step (saescope,
    HF generate + a forward pre-hook, TransformerLens), and saescope clamping a feature of the 131k SAE (encode
    and decode at every step, error term kept)."""
    from saescope.interp.steer import Intervention, steer

    dev = device()
    lm = load_lm(work)
    base = resident_bytes(dev)
    sae = make_sae(S, dev)
    n, hook, reps = S["new_tokens"], S["hook"], S["gen_repeats"]
    layer = int(hook.split(".")[1])
    tokens = lm.to_tokens(PROMPT).to(dev)
    vec = (sae.W_dec[123] * 8.0).detach()
    rows = []

    def ours():
        with lm.intervene({hook: lambda a: a + vec}):
            return lm.generate(tokens, max_new_tokens=n)

    def hf():
        h = lm.hf_model.transformer.h[layer].register_forward_pre_hook(lambda m, a: (a[0] + vec, *a[1:]))
        try:
            with torch.no_grad():
                return lm.hf_model.generate(tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=n,
                                            min_new_tokens=n, do_sample=False, pad_token_id=0)
        finally:
            h.remove()

    def clamp():
        with steer(lm, sae, Intervention((123,), "clamp", 8.0)):
            return lm.generate(tokens, max_new_tokens=n)

    cases = [("saescope generate (add)", ours), ("HF generate + pre-hook (add)", hf)]
    try:
        tl = _transformer_lens(lm, dev)

        def theirs():
            with tl.hooks(fwd_hooks=[(hook, lambda a, hook: a + vec)]):
                return tl.generate(tokens, max_new_tokens=n, do_sample=False, use_past_kv_cache=True,
                                   stop_at_eos=False, verbose=False)

        cases.append(("TransformerLens generate (add)", theirs))
    except ImportError as exc:
        rows.append({"name": "TransformerLens generate (add)", "error": f"not installed ({exc.name})"})
    cases.append((f"saescope clamp, {S['d_sae']:,}-latent SAE", clamp))
    outs = {}
    for name, fn in cases:
        fn()   # warm-up
        t, out, peak = timed(fn, dev, reps)
        outs[name] = out
        rows.append({"name": name, "tok_s": n / t, "peak": peak})
    ref = outs["saescope generate (add)"]
    for row in rows:
        if row["name"] in outs and "(add)" in row["name"]:
            row["same_tokens"] = bool(torch.equal(outs[row["name"]].to(ref.device), ref))
    return {"rows": rows, "resident_model": base, "prompt_tokens": int(tokens.shape[1]), "new_tokens": n}


# ------------------------------------------------------------------------------------------------- training
def _steps(step, seconds: float, at_least: int = 3) -> list[float]:
    """Time ``step()`` repeatedly (after one warm-up) for about ``seconds``."""
    step()
    times, t_end = [], time.perf_counter() + seconds
    while len(times) < at_least or time.perf_counter() < t_end:
        sync(device())
        t0 = time.perf_counter()
        step()
        sync(device())
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return times


def _train_saescope(data, S, dev):
    from saescope.train import TrainConfig
    from saescope.train.losses import TrainableSAE
    from saescope.train.monitor import adam as _adam

    B = S["train_batch"]
    cfg = TrainConfig(architecture="topk", d_sae=S["d_sae"], k=S["k"], batch_size=B)
    model = TrainableSAE(cfg, data.shape[1], torch.Generator().manual_seed(0), device=dev)
    params = list(model.parameters())
    opt = _adam(params, cfg, dev)
    it = iter(range(10**9))

    def step():   # the trainer's step body (trainer.py): loss, backward, projection, clip, Adam, renormalise
        x = data[(next(it) * B) % (data.shape[0] - B):][:B]
        out = model.loss(x, None)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        model.remove_parallel_grad()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        model.renormalize_decoder()
    return step


def _train_sparsify(data, S, dev):
    from sparsify import SparseCoder, SparseCoderConfig

    B = S["train_batch"]
    sae = SparseCoder(data.shape[1], SparseCoderConfig(num_latents=S["d_sae"], k=S["k"]), device=dev,
                      dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=4e-4)
    it = iter(range(10**9))

    def step():   # sparsify's Trainer.fit step (bf16 autocast on CUDA is built into SparseCoder.forward)
        x = data[(next(it) * B) % (data.shape[0] - B):][:B]
        out = sae(x)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
    return step


def _train_saelens(data, S, dev):
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    B = S["train_batch"]
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=data.shape[1], d_sae=S["d_sae"], k=S["k"], device=str(dev)))
    opt = torch.optim.Adam(sae.parameters(), lr=4e-4)
    coeffs = {n: (c.value if hasattr(c, "value") else c) for n, c in sae.get_coefficients().items()}
    it = iter(range(10**9))

    def step():   # SAELens trainer's step: training_forward_pass, backward, clip, Adam
        i = next(it)
        x = data[(i * B) % (data.shape[0] - B):][:B]
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coeffs, dead_neuron_mask=None,
                                                       n_training_steps=i, is_logging_step=False))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    return step


def part_train(work: Path, S: dict) -> dict:
    """TopK training steps (d_in x d_sae, k, batch): saescope, sparsify, SAELens, one after the other."""
    from saescope.plan import SAEShape, plan_task

    dev = device()
    B, d_in = S["train_batch"], S["n_embd"]
    g = torch.Generator(device=dev).manual_seed(0)
    data = torch.randn(B * 4, d_in, device=dev, generator=g) + 0.5 * torch.randn(d_in, device=dev, generator=g)
    shape = SAEShape("random", "topk", d_in, S["d_sae"], S["k"])
    planned = plan_task("train", None, shape, _budget(), batch_tokens=B, with_model=False).total
    rows = []
    for name, make, dtype in (("saescope", _train_saescope, "fp32"),
                              ("sparsify (eai-sparsify)", _train_sparsify, "bf16 autocast on CUDA"),
                              ("SAELens", _train_saelens, "fp32")):
        row = {"name": name, "dtype": dtype}
        try:
            with Peak(dev) as peak:
                times = _steps(make(data, S, dev), S["train_seconds"])
            row.update(tok_s=B / statistics.median(times), steps=len(times), peak=peak.value)
            if name == "saescope":
                row["planned"] = planned
        except ImportError as exc:
            row["error"] = f"not installed ({exc.name})"
        except torch.cuda.OutOfMemoryError:
            row["error"] = "out of memory"
        rows.append(row)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows, "shape": dict(d_in=d_in, d_sae=S["d_sae"], k=S["k"], batch=B)}


# ------------------------------------------------------------------------------------------------- read, stats
def part_read(work: Path, S: dict) -> dict:
    """read_features latency for one text (the CLI's `saescope read`), at two lengths."""
    from saescope.interp.read import read_features
    from saescope.plan import ModelShape, SAEShape, plan_task

    dev = device()
    lm = load_lm(work)
    sae = make_sae(S, dev)
    resident = resident_bytes(dev)
    rows = []
    for n in S["read_tokens"]:
        ids = torch.randint(1, 4000, (n - 1,), generator=torch.Generator().manual_seed(n)).tolist()
        text = lm.tokenizer.decode(ids)
        read_features(lm, sae, text)     # warm-up
        times = []
        with Peak(dev) as peak:
            for _ in range(S["read_repeats"]):
                sync(dev)
                t0 = time.perf_counter()
                res = read_features(lm, sae, text, top_k=5)
                sync(dev)
                times.append(time.perf_counter() - t0)
        tokens = len(res[0].tokens)
        planned = plan_task("read", ModelShape.from_lm(lm), SAEShape.from_sae(sae), _budget(), context=tokens,
                            batch_tokens=tokens, resident=False).total
        rows.append({"name": f"read, {tokens} tokens", "ms": statistics.median(times) * 1e3, "peak": peak.value,
                     "planned": planned})
    return {"rows": rows, "resident": resident}


def part_stats(work: Path, S: dict) -> dict:
    """compute_feature_stats over random-token contexts of 128, batch size chosen by the memory planner."""
    from saescope.plan import ModelShape, SAEShape, pick_batch_size, plan_task
    from saescope.report import StatsConfig, compute_feature_stats

    dev = device()
    lm = load_lm(work)
    sae = make_sae(S, dev)
    resident = resident_bytes(dev)
    ctx = 128
    batch = pick_batch_size("stats", lm, sae, ctx, cap=S["stats_cap"])
    n = max(batch, S["stats_tokens"] // ctx)
    corpus = torch.randint(1, 4000, (n, ctx), generator=torch.Generator().manual_seed(0))
    corpus[:, 0] = 0
    cfg = StatsConfig(n_tokens=n * ctx, context_size=ctx, batch_size=batch, checkpoint_every=0)
    t0 = time.perf_counter()
    with Peak(dev) as peak:
        stats = compute_feature_stats(lm, sae, corpus, cfg)
    total = time.perf_counter() - t0
    planned = plan_task("stats", ModelShape.from_lm(lm), SAEShape.from_sae(sae), _budget(), context=ctx,
                        batch_tokens=batch * ctx, resident=False).total
    return {"rows": [{"name": f"feature statistics, {stats.n_tokens:,} tokens, batch {batch} x {ctx}",
                      "tok_s": stats.n_tokens / stats.seconds, "end_to_end_s": total, "peak": peak.value,
                      "planned": planned}], "resident": resident}


# ------------------------------------------------------------------------------------------------- report
def _mb(x) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f} MiB"


def report(work: Path) -> bool:
    """Print every part's rows; False when a part is missing or the kernels disagree."""
    names = ("prepare", "kernels", "generate", "train", "read", "stats")
    expected = (work / "expected").read_text().split() if (work / "expected").is_file() else names
    parts = {p: json.loads((work / f"{p}.json").read_text()) for p in names if (work / f"{p}.json").is_file()}
    ok = True
    head = next(iter(parts.values()), {})
    print(f"\n=== saescope GPU benchmark ({head.get('gpu') or head.get('device')}; smoke={head.get('smoke')}) ===")
    for p in names:
        if p not in expected:
            continue
        if p not in parts:
            print(f"\n[{p}] did not finish (time limit or error; see its log above)")
            ok = False
            continue
        d = parts[p]
        print(f"\n[{p}] {d.get('seconds')} s" + (f": SKIPPED, {d['skipped']}" if d.get("skipped") else ""))
        if p == "prepare":
            print(f"  random GPT-2 ({d['config']['n_layer']} x {d['config']['n_embd']}, vocab {d['config']['vocab_size']:,}): "
                  f"{d['params']:,} parameters")
        for r in d.get("rows", []):
            bits = [f"{r['name']:<46}"]
            for key, fmt in (("tok_s", "{:>10,.1f} tok/s"), ("ms", "{:>9.1f} ms"), ("triton_ms", "triton {:.2f} ms"),
                             ("pytorch_ms", "pytorch {:.2f} ms"), ("rel_err", "rel err {:.1e}")):
                if r.get(key) is not None:
                    bits.append(fmt.format(r[key]))
            if "peak" in r:
                bits.append(f"peak {_mb(r['peak'])}")
            if "planned" in r:
                bits.append(f"planner {_mb(r['planned'])}")
            for key in ("dtype", "same_tokens", "error"):
                if key in r:
                    bits.append(f"{key.replace('_', ' ')}: {r[key]}")
            print("  " + "  ".join(bits))
        if p == "kernels" and d.get("mode") == "interpret":
            print("  (Triton's interpreter on the CPU: the times say nothing about a GPU)")
        if p == "kernels" and not d.get("skipped"):
            print(f"  kernels equal the PyTorch path (<= 1e-5): {'PASS' if d['ok'] else 'FAIL'}")
            ok = ok and d["ok"]
        if p == "train":
            rate = {r["name"]: r.get("tok_s") for r in d["rows"]}
            ours = rate.get("saescope")
            for name, v in rate.items():
                if name != "saescope" and ours and v:
                    print(f"  saescope / {name}: {ours / v:.2f}x")
        if p == "generate":
            rate = {r["name"]: r.get("tok_s") for r in d["rows"]}
            ours = rate.get("saescope generate (add)")
            for name, v in rate.items():
                if "(add)" in name and name != "saescope generate (add)" and ours and v:
                    print(f"  saescope / {name}: {ours / v:.2f}x")
    return ok
