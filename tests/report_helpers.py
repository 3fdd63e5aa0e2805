"""Small builders shared by test_report/test_server/test_browser: a random TopK SAE on the gpt2 fixture,
a token corpus, a feature store, and a real `saescope serve` subprocess."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

HOOK = "blocks.3.hook_resid_pre"
LABELS = {"5": "fifth feature", "7": "a <b>bold</b> label"}


def make_sae(model_name: str, path: Path, d_sae: int = 96, k: int = 6):
    """A TopK SAE with varied activity on the fixture's layer-3 residual stream, saved at ``path`` with labels."""
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    cfg = SAEConfig("topk", d_in=64, d_sae=d_sae, k=k,
                    metadata=SAEMetadata(model_name=model_name, hook_name=HOOK, neuronpedia_id="gpt2-small/3-test"))
    sae = SAE(cfg, seed=0)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(d_sae, generator=torch.Generator().manual_seed(1)) * 0.01 + 0.01)
    sae.save(path)
    (Path(path) / "labels.json").write_text(json.dumps(LABELS))
    return SAE.load(path)


def make_corpus(n: int, ctx: int, seed: int = 0) -> torch.Tensor:
    """Token contexts [n, ctx] starting with BOS (id 0), a few id-0 tokens inside."""
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(1, 4096, (n, ctx), generator=g)
    toks[:, 0] = 0
    toks[min(3, n - 1), ctx // 2] = 0
    return toks


class ServerProcess:
    """`python -m saescope serve ... --port 0` in a subprocess; ``url`` once it is ready. Stops on close()."""

    def __init__(self, args: list[str], timeout: float = 120.0):
        env = {**os.environ, "SAESCOPE_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "saescope", "serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.time() + timeout
        line = ""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            m = re.search(r"(http://\S+/)", line)
            if m:
                self.url = m.group(1)
                return
        self.close()
        raise RuntimeError(f"server not ready in {timeout}s: {line!r}")

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
