"""The embedded default: the bundled model, SAEs, labels and statistics, and the offline `saescope demo`."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saescope.assets import ASSETS, TINY, tiny_model_dir, tiny_sae_dir

SAE_IDS = ["resid2-topk"]
TRANSCODER_IDS = [f"mlp{layer}-transcoder" for layer in range(4)]
CORPUS = Path(os.environ.get("SAESCOPE_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAESCOPE_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", SAESCOPE_NO_PROGRESS="1", **extra)
    return env


def _saescope(args, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saescope", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300, **kw)


def test_package_within_size_budget():
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total <= 25_000_000, f"bundled assets are {total / 1e6:.2f} MB, over the 25 MB budget"
    assert (tiny_model_dir() / "model.safetensors").stat().st_size > 1_000_000  # real weights, not a pointer


@pytest.mark.parametrize("sae_id", SAE_IDS)
def test_bundled_sae_ships_reports_and_labels(sae_id):
    from saescope import SAE

    d = tiny_sae_dir(sae_id)
    sae = SAE.from_spec(f"tiny:{sae_id}")
    labels = json.loads((d / "labels.json").read_text(encoding="utf-8"))
    assert len(labels) == sae.d_sae and all(isinstance(v, str) and v for v in labels.values())
    report = json.loads((d / "eval.json").read_text(encoding="utf-8"))
    assert report["explained_variance"] >= 0.85 and report["dead_fraction"] <= 0.10
    assert sae.cfg.metadata.model_name == "tiny" and sae.cfg.metadata.hook_name.startswith("blocks.")


def test_demo_runs_offline_in_a_fresh_directory(tmp_path):
    t0 = time.time()
    proc = _saescope(["demo"], cwd=tmp_path)
    seconds = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert seconds < 60, f"demo took {seconds:.1f}s"
    report = tmp_path / "saescope-demo.html"
    assert report.exists() and str(report.resolve()) in proc.stdout.replace("\n", "")
    page = report.read_text(encoding="utf-8")
    assert "<table>" in page and "rgba(230,80,30" in page  # the token × feature heatmap is drawn
    counts = re.search(r"appears in (\d+)/(\d+) baseline samples and (\d+)/(\d+) steered", " ".join(proc.stdout.split()))
    assert counts, proc.stdout[-1500:]
    base, n, steered, _ = map(int, counts.groups())
    assert n == 20 and steered >= base + 5, f"steering moved the concept from {base}/20 to only {steered}/20"
    # a second run replaces its own earlier report, but never a file it did not write
    assert _saescope(["demo"], cwd=tmp_path).returncode == 0
    other = tmp_path / "notes.html"
    other.write_text("mine")
    proc = _saescope(["demo", "--out", str(other)], cwd=tmp_path)
    assert proc.returncode == 2 and other.read_text() == "mine" and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not (CORPUS / "war_and_peace.txt").exists(), reason="../shared/corpus is not beside the checkout")
def test_default_sae_quality_on_held_out_war_and_peace(tmp_path):
    """The CLI contract of the embedded-default issue, on the held-out last 5% of War and Peace."""
    from corpus import load_file, split

    held_out = split(load_file("war_and_peace.txt", CORPUS))[1]
    data = tmp_path / "held_out.txt"
    data.write_text(held_out, encoding="utf-8")
    proc = _saescope(["eval", "--model", "tiny", "--dataset", str(data), "--tokens", "24000", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["tokens"] >= 20_000
    assert result["explained_variance"] >= 0.85
    assert result["ce_loss_recovered"] >= 0.85
    assert result["dead_fraction"] <= 0.10
    assert result["l0"] == pytest.approx(32, abs=0.01)  # TopK k = 32


def test_read_shows_labels_by_default(tmp_path):
    proc = _saescope(["read", "The Emperor Napoleon", "--top", "2", "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model"] == "tiny" and out["hook"] == "blocks.2.hook_resid_pre"
    labels = json.loads((tiny_sae_dir() / "labels.json").read_text(encoding="utf-8"))
    feats = [f for t in out["tokens"] for f in t["features"]]
    assert feats and all(f["label"] == labels[str(f["index"])] for f in feats)


def test_model_card_states_the_figures():
    card = (Path(__file__).resolve().parents[1] / "MODEL_CARD.md").read_text(encoding="utf-8")
    report = json.loads((tiny_model_dir() / "training_report.json").read_text(encoding="utf-8"))
    assert f"{report['held_out']['war_and_peace.txt']['loss']:.2f}" in card
    for sae_id in SAE_IDS + TRANSCODER_IDS:
        ev = json.loads((tiny_sae_dir(sae_id) / "eval.json").read_text(encoding="utf-8"))["explained_variance"]
        assert sae_id in card and f"{ev:.3f}" in card
    assert (TINY / "demo.json").exists()
