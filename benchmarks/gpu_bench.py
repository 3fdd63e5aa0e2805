"""GPU benchmark: one part per process, run by ``benchmarks/gpu.sh`` (each part under its own time limit).

    python benchmarks/gpu_bench.py --part prepare --work DIR [--smoke]    build the random GPT-2-small-shaped model
    python benchmarks/gpu_bench.py --part kernels|generate|train|read|stats --work DIR [--smoke]
    python benchmarks/gpu_bench.py --part report --work DIR                print everything side by side

Everything is built locally from seeds (GPT-2 small's published config, random weights; a random 131,072-latent
TopK SAE, k 32): no network. Each part writes ``DIR/<part>.json``; ``report`` prints the tables. ``--smoke``: tiny
sizes that run on a CPU in seconds, through every code path. Peak memory is CUDA's ``max_memory_allocated``
above what was allocated before the measured call (weights already resident are listed apart); the memory
planner's estimate for the same call is printed beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "benchmarks")]

FULL = dict(n_layer=12, n_embd=768, n_head=12, vocab=50257, n_ctx=1024, d_sae=131072, k=32, train_batch=4096,
            train_seconds=12.0, new_tokens=64, gen_repeats=2, read_tokens=(128, 1024), read_repeats=10,
            stats_tokens=131072, stats_cap=64, kernel_batch=4096, kernel_d_sae=131072, hook="blocks.6.hook_resid_pre")
SMOKE = dict(n_layer=2, n_embd=64, n_head=4, vocab=4096, n_ctx=256, d_sae=1024, k=8, train_batch=256,
             train_seconds=0.5, new_tokens=6, gen_repeats=1, read_tokens=(16, 64), read_repeats=2,
             stats_tokens=512, stats_cap=4, kernel_batch=32, kernel_d_sae=128, hook="blocks.1.hook_resid_pre")


PARTS = ("prepare", "kernels", "generate", "train", "read", "stats")


def sizes(smoke: bool) -> dict:
    return SMOKE if smoke else FULL


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Peak:
    """Peak CUDA memory above what was allocated on entry (None on the CPU)."""

    def __init__(self, dev):
        self.dev, self.value = dev, None

    def __enter__(self):
        import torch

        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        import torch

        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            self.value = torch.cuda.max_memory_allocated() - self.base
        return False


def resident_bytes(dev) -> int | None:
    import torch

    return torch.cuda.memory_allocated() if dev.type == "cuda" else None


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, repeats: int = 1) -> tuple[float, object, int | None]:
    """Best wall time of ``repeats`` calls (after none: warm up yourself), the last result, and the peak memory."""
    best, out = float("inf"), None
    with Peak(dev) as peak:
        for _ in range(repeats):
            sync(dev)
            t0 = time.perf_counter()
            out = fn()
            sync(dev)
            best = min(best, time.perf_counter() - t0)
    return best, out, peak.value


def write(work: Path, part: str, data: dict) -> None:
    (work / f"{part}.json").write_text(json.dumps(data, indent=1))


# ------------------------------------------------------------------------------------------------- prepare
def part_prepare(work: Path, S: dict) -> dict:
    """GPT-2 small's config (full) or a tiny one (smoke), random weights (x3, so greedy paths are not constant),
    the bundled tokenizer (ids < 4096), saved and published into an offline hub cache as 'gpt2'."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2_small import GPT2_SMALL_CONFIG
    from hubcache import add_model_dir
    from saescope.assets import tiny_model_dir

    raw = dict(GPT2_SMALL_CONFIG)
    raw.update(n_layer=S["n_layer"], n_embd=S["n_embd"], n_head=S["n_head"], vocab_size=S["vocab"],
               n_positions=S["n_ctx"], n_ctx=S["n_ctx"], bos_token_id=0, eos_token_id=0)
    raw.pop("model_type", None)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**raw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                p.mul_(3.0)
    out = work / "model"
    model.save_pretrained(out, safe_serialization=True)
    for f in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir() / f, out / f)
    add_model_dir(work / "hf" / "hub", "gpt2", out)
    return {"params": sum(p.numel() for p in model.parameters()), "config": raw}


def load_lm(work: Path):
    from saescope.lm import LanguageModel

    return LanguageModel.from_pretrained("gpt2", device=str(device()))


def make_sae(S: dict, dev, hook: str | None = None):
    import torch

    from saescope.sae import SAE, SAEConfig, SAEMetadata

    cfg = SAEConfig("topk", d_in=S["n_embd"], d_sae=S["d_sae"], k=S["k"],
                    metadata=SAEMetadata(model_name="gpt2", hook_name=hook or S["hook"]))
    sae = SAE(cfg, seed=0).to(dev)
    with torch.no_grad():   # trained-like: decoder rows of norm 1, encoder = decoder^T, a small negative bias
        sae.W_dec.copy_(torch.nn.functional.normalize(sae.W_dec, dim=-1))
        sae.W_enc.copy_(sae.W_dec.t())
        sae.b_enc.fill_(-0.1)
    return sae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", required=True,
                    choices=("prepare", "kernels", "generate", "train", "read", "stats", "report", "all"))
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.update(HF_HOME=str(args.work / "hf"), HF_HUB_CACHE=str(args.work / "hf" / "hub"), HF_HUB_OFFLINE="1",
                      TRANSFORMERS_OFFLINE="1", SAESCOPE_NO_PROGRESS="1", TOKENIZERS_PARALLELISM="false")
    import warnings

    warnings.filterwarnings("ignore")
    import gpu_parts

    S = sizes(args.smoke)
    if args.part == "report":
        sys.exit(0 if gpu_parts.report(args.work) else 1)
    if not args.smoke and device().type != "cuda":
        sys.exit("error: no CUDA device; on a CPU run benchmarks/gpu.sh --smoke")
    names = PARTS if args.part == "all" else (args.part,)     # all: one process (the smoke run; imports once)
    for name in names:
        fn = part_prepare if name == "prepare" else getattr(gpu_parts, f"part_{name}")
        t0 = time.perf_counter()
        data = fn(args.work, S)
        data.update(part=name, seconds=round(time.perf_counter() - t0, 1), device=str(device()), smoke=args.smoke,
                    gpu=_gpu_name())
        write(args.work, name, data)
        print(f"{name}: done in {data['seconds']} s", flush=True)


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


if __name__ == "__main__":
    main()
