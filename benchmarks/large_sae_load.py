"""Peak memory of loading a large SAE, against its size on disk, one fresh process per load.

    python benchmarks/large_sae_load.py [--d-in 2304] [--d-sae 65536] [--src SRC_DIR] [--formats saelens npz ...]

Writes a synthetic float32 SAE (default d_in 2304, d_sae 65,536: W_enc + W_dec = 1.2 GB) in the native
(SAELens) layout, as a Gemma Scope ``params.npz``, as a sparsify folder and as an OpenAI ``.pt``, then loads
each in a child process with ``SAE.load`` (float32, and ``dtype=torch.bfloat16``) and reports the wall time
and the peak RSS above the RSS after ``import torch, saescope.sae``. ``--src`` points at another checkout to
compare (e.g. one that read whole files before converting). Goal: loading needs about the SAE's size, not 2-3x.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch, saescope.sae
from saescope.sae import SAE
def hwm():  # VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited across fork+exec)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
base = hwm()
t = time.perf_counter()
dtype = {"float32": None, "bfloat16": torch.bfloat16}[sys.argv[2]]
sae = SAE.load(sys.argv[1], dtype=dtype)
dt = time.perf_counter() - t
params = sum(p.numel() * p.element_size() for p in sae.parameters()) / 2**20
print(json.dumps({"seconds": dt, "base_mb": base, "peak_mb": hwm(),
                  "params_mb": params}))
"""


def write_all(root: Path, d_in: int, d_sae: int, formats: list[str]) -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(d_in, d_sae, generator=g) * 0.02
    W_dec = torch.randn(d_sae, d_in, generator=g) * 0.02
    b_enc, b_dec, thr = torch.zeros(d_sae), torch.zeros(d_in), torch.full((d_sae,), 0.01)
    out = {}
    if "saelens" in formats:
        d = root / "saelens"
        d.mkdir()
        save_file({"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": thr},
                  str(d / "sae_weights.safetensors"))
        (d / "cfg.json").write_text(json.dumps({"architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae,
                                                "dtype": "float32", "apply_b_dec_to_input": False,
                                                "metadata": {"sae_lens_version": "6.5.0"}}))
        out["saelens"] = d
    if "npz" in formats:
        (root / "gs").mkdir()
        np.savez(root / "gs" / "params.npz", W_enc=W_enc.numpy(), W_dec=W_dec.numpy(), b_enc=b_enc.numpy(),
                 b_dec=b_dec.numpy(), threshold=thr.numpy())
        out["npz"] = root / "gs" / "params.npz"
    if "sparsify" in formats:
        d = root / "layers.0"
        d.mkdir()
        save_file({"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec},
                  str(d / "sae.safetensors"))
        (d / "cfg.json").write_text(json.dumps({"num_latents": d_sae, "k": 64, "d_in": d_in}))
        out["sparsify"] = d
    if "openai_pt" in formats:
        torch.save({"pre_bias": b_dec, "encoder.weight": W_enc.T.contiguous(), "latent_bias": b_enc,
                    "decoder.weight": W_dec.T.contiguous(), "activation": "TopK",
                    "activation_state_dict": {"k": 64}}, root / "openai.pt")
        out["openai_pt"] = root / "openai.pt"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-in", type=int, default=2304)
    ap.add_argument("--d-sae", type=int, default=65536)
    ap.add_argument("--src", default=str(ROOT / "src"))
    ap.add_argument("--formats", nargs="*", default=["saelens", "npz", "sparsify", "openai_pt"])
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temporary directory)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        paths = write_all(Path(tmp), args.d_in, args.d_sae, args.formats)
        for fmt, path in paths.items():
            disk = sum(f.stat().st_size for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file()) / 2**20
            for dtype in ("float32", "bfloat16"):
                proc = subprocess.run([sys.executable, "-c", CHILD, str(path), dtype], capture_output=True, text=True,
                                      env={"PYTHONPATH": args.src, "PATH": "/usr/bin:/bin"}, timeout=1800)
                try:
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    print(f"{fmt:10s} {dtype:9s} failed: {proc.stderr.strip()[-300:]}")
                    continue
                extra = r["peak_mb"] - r["base_mb"]
                print(f"{fmt:10s} {dtype:9s} on disk {disk:7.0f} MB  params {r['params_mb']:7.0f} MB  "
                      f"load peak RSS +{extra:7.0f} MB ({extra / disk:.2f}x disk)  {r['seconds']:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
