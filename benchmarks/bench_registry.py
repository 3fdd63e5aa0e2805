"""Release catalogue: `saescope list --json` (a fresh process) vs SAELens's release directory, side by side.

Each candidate runs in a fresh Python process (what a user waits for): saescope's whole `list --json` command, and
SAELens's `get_pretrained_saes_directory()` (parsing its pretrained_saes.yaml; the import of sae_lens itself is
measured separately and not counted). Interleaved, best of --repeats; wall time and CPU time of the process.

    python benchmarks/bench_registry.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAESCOPE = ("import sys, resource; from saescope.cli import main; sys.stdout = open(__import__('os').devnull, 'w'); "
            "main(['list', '--json']); sys.stderr.write('%.4f' % sum(resource.getrusage(resource.RUSAGE_SELF)[:2]))")
SAELENS = ("import sys, resource, time; import sae_lens.loading.pretrained_saes_directory as d; "
           "r0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]); t = time.perf_counter(); "
           "n = len(d.get_pretrained_saes_directory()); w = time.perf_counter() - t; "
           "sys.stderr.write('%.4f %.4f %d' % (sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - r0, w, n))")


def run(code: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - t, proc.stderr.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    best = {"saescope wall": 1e9, "saescope cpu": 1e9, "sae_lens wall": 1e9, "sae_lens cpu": 1e9}
    for _ in range(args.repeats):
        wall, cpu = run(SAESCOPE)
        best["saescope wall"], best["saescope cpu"] = min(best["saescope wall"], wall), min(best["saescope cpu"], float(cpu))
        _, out = run(SAELENS)
        cpu_l, wall_l, n = out.split()
        best["sae_lens wall"], best["sae_lens cpu"] = min(best["sae_lens wall"], float(wall_l)), min(best["sae_lens cpu"], float(cpu_l))
    print(f"releases: SAELens directory {n}")
    for k, v in best.items():
        print(f"{k:16s} {v:7.3f} s")
    print(f"SAELens directory parse / whole saescope list: wall {best['sae_lens wall'] / best['saescope wall']:.1f}x, "
          f"cpu {best['sae_lens cpu'] / best['saescope cpu']:.1f}x")


if __name__ == "__main__":
    main()
