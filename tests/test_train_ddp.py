"""DDP on a streamed dataset: each rank runs the language model on its own shard of the global batch only, and the
ranks end with identical weights (torchrun, two CPU processes, gloo)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(tmp: Path, nproc: int, steps: int = 3, batch: int = 512) -> list[dict]:
    tmp.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKER), str(tmp), str(steps), str(batch), "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.slow
def test_each_rank_computes_only_its_shard(tmp_path):
    one = _run(tmp_path / "one", 1)
    two = _run(tmp_path / "two", 2)
    assert [r["world"] for r in two] == [2, 2]
    assert two[0]["weights"] == two[1]["weights"]          # gradients averaged, initialisation broadcast
    alone = one[0]["lm_tokens"]
    for r in two:
        # half of the single process's model work each (plus at most one harvest batch of look-ahead)
        assert r["lm_tokens"] < 0.75 * alone, (r, alone)
    assert sum(r["lm_tokens"] for r in two) < 1.3 * alone
