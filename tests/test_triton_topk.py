"""The Triton kernels of the sparse TopK training path equal the PyTorch path (within 1e-5), run on the CPU
under Triton's interpreter. Skipped where Triton is not installed (it is optional; `.ci/run` installs it in its
compatibility venv so the kernels are checked there)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytestmark = pytest.mark.compat
ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: TRITON_INTERPRET must be set before Triton is imported.
SCRIPT = r"""
import json, os, torch
from saescope.train import TrainConfig
from saescope.train.losses import TrainableSAE
from saescope.train import sparse, triton_topk

torch.manual_seed(0)
out = {"cpu by default": triton_topk.dispatch(torch.zeros(1)) is not None}
os.environ["SAESCOPE_TRITON"] = "interpret"
out["dispatched"] = triton_topk.dispatch(torch.zeros(1)) is not None

def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

def both(fn):
    os.environ["SAESCOPE_TRITON"] = "interpret"; a = fn()
    os.environ["SAESCOPE_TRITON"] = "0"; b = fn()
    return a, b

B, D, d, k = 48, 300, 40, 7
pre = torch.randn(B, D)
for name, (pat, vals) in {"topk": sparse.topk_pattern(pre, k),
                          "batchtopk": sparse.batch_topk_pattern(pre.relu(), k * B)}.items():
    g = torch.randn(B, d)
    W = torch.randn(D, d)
    a, b = both(lambda: pat.sampled(g, W))
    out[name + " sampled"] = rel(a, b)
    a, b = both(lambda: pat.t_matmul(vals, g))
    out[name + " t_matmul"] = rel(a, b)
    out[name + " empty latents"] = int((pat.t_crow[1:] == pat.t_crow[:-1]).sum())

x = torch.randn(64, 32) + 0.3
for arch in ("topk", "batchtopk"):
    def grads():
        model = TrainableSAE(TrainConfig(architecture=arch, d_sae=256, k=8, batch_size=64), 32,
                             torch.Generator().manual_seed(1))
        dead = torch.zeros(256, dtype=torch.bool); dead[::3] = True      # AuxK takes the same path
        model.loss(x, dead).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}
    a, b = both(grads)
    for n in b:
        out[f"{arch} grad {n}"] = rel(a[n], b[n])
print("RESULT " + json.dumps(out))
"""


def test_kernels_equal_the_pytorch_path_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT / "src") + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    res = json.loads(lines[-1][len("RESULT "):])
    assert res.pop("dispatched") is True and res.pop("cpu by default") is False
    assert res["topk empty latents"] > 0 and res["batchtopk empty latents"] > 0   # zero rows are written too
    errors = {k: v for k, v in res.items() if "empty" not in k}
    assert len(errors) == 4 + 2 * 4 and all(v <= 1e-5 for v in errors.values()), errors
