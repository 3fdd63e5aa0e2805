"""DDP on a streamed dataset: wall-clock of one process against two (`torchrun --nproc_per_node 2`), the same global
batch and steps, one thread per process (a loaded machine punishes multi-threaded matmuls far more than separate
processes, so 1 x 2 threads against 2 x 1 would flatter DDP), measured in one run.

    python benchmarks/bench_ddp.py [--steps 12] [--batch 4096]

Each rank runs the bundled model on its own shard of the contexts only (saescope.train.sources.stream_from_model),
so the model work per rank halves; the figure is the training time reported by rank 0 (start-up excluded).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = Path(__file__).resolve().parents[1] / "tests" / "ddp_worker.py"


def run(nproc: int, steps: int, batch: int, threads: int) -> list[dict]:
    out = Path(tempfile.mkdtemp(prefix=f"ddp{nproc}-"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(WORKER),
           str(out), str(steps), str(batch), str(threads)]
    subprocess.run(cmd, check=True, capture_output=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=4096)
    args = p.parse_args()
    one = run(1, args.steps, args.batch, threads=1)
    two = run(2, args.steps, args.batch, threads=1)
    t1, t2 = one[0]["seconds"], max(r["seconds"] for r in two)
    per_rank = ", ".join(f"{r['lm_tokens']:,}" for r in two)
    print(f"tokens through the model per rank: 1 process {one[0]['lm_tokens']:,}; 2 processes {per_rank}")
    print(f"training wall-clock: 1 process {t1:.1f} s; 2 processes {t2:.1f} s; "
          f"speed-up {t1 / t2:.2f}x; ranks agree: {two[0]['weights'] == two[1]['weights']}")


if __name__ == "__main__":
    main()
