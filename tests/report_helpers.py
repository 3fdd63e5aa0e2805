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


EXPLANATIONS = {11: ("ships and maritime navigation", 0.83), 12: ("numbers in tables", 0.61)}


def add_explanations(store_path: Path, explanations: dict = EXPLANATIONS) -> None:
    """Write ``{feature: (text, detection balanced accuracy)}`` into a store as ``saescope explain`` would."""
    from saescope.report.store_explain import ExplanationWriter

    with ExplanationWriter(store_path) as w:
        for f, (text, score) in explanations.items():
            w.save(f, {"text": text, "model": "test-llm", "method": "test", "key": "k", "settings": {}},
                   scores=[{"scorer": "detection", "judge": "llm:test-llm", "key": "d", "n": 20,
                            "metrics": {"balanced_accuracy": score, "auroc": None}}])


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


class ThreadServer:
    """The app served by a real uvicorn on 127.0.0.1 (any free port), in a thread of this process; ``url``."""

    def __init__(self, app):
        import threading

        import uvicorn

        from saescope.server import bind_socket

        sock = bind_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}/"

    @staticmethod
    def rss_kb() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_test_server(gpt2_dir: Path, tmp: Path) -> ThreadServer:
    """A random TopK SAE with a feature store, served on 127.0.0.1 by uvicorn (``create_app`` as `saescope serve`
    builds it; reads may run 256 at a time for the load test). ``.sae_path`` and ``.d_sae`` are set."""
    from saescope.lm import LanguageModel
    from saescope.report import FeatureStore, StatsConfig, compute_feature_stats
    from saescope.server import ServerConfig, create_app

    lm = LanguageModel.from_pretrained(str(gpt2_dir))
    sae = make_sae(lm.name, tmp / "sae")
    cfg = StatsConfig(n_tokens=12 * 24, context_size=24, batch_size=12, top_k=5, window=3, checkpoint_every=0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compute_feature_stats(lm, sae, make_corpus(12, 24), cfg, out=sae.path / "features.sqlite")
    finally:
        torch.set_num_threads(before)
    add_explanations(sae.path / "features.sqlite")
    app = create_app(lm, sae, str(sae.path), FeatureStore.for_sae(sae), ServerConfig(max_concurrent_reads=256))
    srv = ThreadServer(app)
    srv.sae_path, srv.d_sae = sae.path, sae.d_sae
    return srv
