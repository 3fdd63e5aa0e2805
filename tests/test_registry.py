"""The release registry is data generated from the installed SAELens's published release list, and checked:
every release and SAE of the list is in it (or excluded with a recorded reason) with the list's facts;
``saescope list`` is fast, torch-free and filterable; an uncached SAE offline fails at once, with one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saescope.sae import registry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def published():
    pytest.importorskip("sae_lens")
    import build_registry

    return build_registry.load_list(None)


def test_committed_registry_is_the_generated_one(published):
    import build_registry

    text = build_registry.dumps(build_registry.build(*published))
    assert registry.REGISTRY.read_text(encoding="utf-8") == text, "run scripts/build_registry.py"


def test_every_published_release_and_sae_is_covered(published):
    data, version = published
    assert registry.source()["sae_lens_version"] == version
    excluded = registry.excluded()
    names = {s["name"] for s in registry.summaries()}
    missing = [n for n in data if n not in names and not (excluded.get(n) or "").strip()]
    assert not missing, f"releases of the published list missing without a recorded reason: {missing}"
    assert len([n for n in data if n in names]) >= 160
    for name, rel in data.items():
        if name not in names:
            continue
        ours = registry.get_release(name)
        assert ours.repo_id == rel["repo_id"] and ours.sae_lens["model"] == rel["model"], name
        assert ours.sae_lens["conversion"] == rel.get("conversion_func"), name
        by_id = {e.id: e for e in ours.saes}
        assert len(by_id) == len(rel["saes"]), name
        for s in rel["saes"]:
            e = by_id[str(s["id"])]
            assert (e.path, e.neuronpedia_id, e.l0, e.norm_scaling_factor) == (
                str(s["path"]), s.get("neuronpedia"), s.get("l0"), s.get("norm_scaling_factor")), (name, s["id"])
        if ours.unsupported:
            assert len(ours.unsupported) > 20


def test_entries_carry_what_the_attach_layer_needs():
    from saescope.sae.formats.families import MODULES

    for rel in registry.releases():
        assert rel.format in MODULES, rel.name
        if rel.local:
            continue
        assert rel.model == "gpt2" or "/" in rel.model, (rel.name, rel.model)   # hub ids
        for e in rel.saes:
            if rel.format not in ("saelens", "clt_layer"):
                assert e.hook_name, (rel.name, e.id)
            if rel.format in ("gemma_scope_transcoder", "plt_transcoder") or e.path.startswith("transcoder"):
                assert e.hook_name_out and e.hook_name_out.endswith("hook_mlp_out"), (rel.name, e.id)
            if rel.format == "qwen_scope":
                assert e.k and e.d_sae and e.hf_hook_name, (rel.name, e.id)
            if rel.format in ("llama_scope", "llama_scope_r1"):
                assert e.norm_scaling_factor, (rel.name, e.id)
    g2 = registry.get_release("gemma-scope-2-1b-it-transcoders").sae("transcoder/layer_13_width_16k_l0_big")
    assert (g2.hook_name, g2.hook_name_out, g2.d_sae, g2.d_in) == ("blocks.13.mlp.hook_in", "blocks.13.hook_mlp_out",
                                                                   16384, 1152)
    assert registry.get_release("gemma-scope-9b-it-res").model == "google/gemma-2-9b-it"  # the repo is -it


def test_model_ids_agree_with_transformerlens():
    pytest.importorskip("transformer_lens")
    import build_registry
    from transformer_lens.loading_from_pretrained import get_official_model_name

    for name, hub_id in build_registry.MODEL_IDS.items():
        assert get_official_model_name(name) == hub_id, name


def _cli(*args, env=None, timeout=60):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "import sys, resource; from saescope.cli import main; rc = main(sys.argv[1:]); "
                           "sys.stderr.write('TORCH=%s CPU=%.3f\\n' % ('torch' in sys.modules, "
                           "sum(resource.getrusage(resource.RUSAGE_SELF)[:2]))); sys.exit(rc)", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)
    return proc, time.perf_counter() - t


def test_list_is_fast_torch_free_and_covers_the_list():
    proc, wall = _cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) >= 161 and {"name", "model", "format", "n_saes", "repo_id"} <= set(rows[0])
    info = proc.stderr.strip().splitlines()[-1]
    assert "TORCH=False" in info, info
    cpu = float(info.split("CPU=")[1])
    assert cpu < 1.0, f"saescope list took {cpu:.2f} s of CPU ({wall:.2f} s wall)"
    proc, _ = _cli("list")
    assert proc.returncode == 0 and "gemma-scope-2-27b-it-transcoders" in proc.stdout


def test_list_filters():
    proc, _ = _cli("list", "--json", "--model", "gemma-2-2b", "--search", "clt")
    assert [r["name"] for r in json.loads(proc.stdout)] == ["mntss-gemma-2-2b-2.5m-clt-as-per-layer"]
    proc, _ = _cli("list", "--json", "--search", "gemmascope-res-16k layer_20")
    rows = json.loads(proc.stdout)
    assert rows and all(r["model"].startswith("google/gemma-2") for r in rows)
    assert all(all("layer_20" in i for i in r["matching_saes"]) for r in rows if "matching_saes" in r)
    proc, _ = _cli("list", "--json", "--release", "qwen-scope-3-8b-base-w64k-l50", "--search", "layer3")
    d = json.loads(proc.stdout)
    assert [s["id"] for s in d["saes"]] == ["layer3"] + [f"layer3{i}" for i in range(6)]
    assert d["saes"][0]["k"] == 50 and d["model"] == "Qwen/Qwen3-8B-Base"
    proc, _ = _cli("list", "--model", "no-such-model")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 2 and "no release matches" in proc.stderr


@pytest.mark.parametrize("offline", ["1", "0"])
def test_uncached_release_fails_fast_with_one_line(tmp_path, offline):
    """Not cached: one line at once, both with HF_HUB_OFFLINE=1 and with an unreachable hub (no 20 s of retries)."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "HF_HUB_OFFLINE": offline,
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc, wall = _cli("convert", "gemma-scope-2b-pt-res-canonical:layer_0/width_16k/canonical", str(tmp_path / "out"),
                      env=env)
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("TORCH=")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "not in the local Hugging Face cache" in lines[0] and "params.npz" in lines[0]
    assert ("HF_HUB_OFFLINE=1" if offline == "1" else "127.0.0.1:9 unreachable") in lines[0]
    assert wall < 15, wall


def test_unknown_release_and_sae_are_one_line_errors():
    from saescope.errors import CheckpointError

    with pytest.raises(CheckpointError, match="unknown SAE release 'gemma-scope-2b'.*did you mean"):
        registry.get_release("gemma-scope-2b")
    with pytest.raises(CheckpointError, match="has no SAE 'layer_99'"):
        registry.get_release("qwen-scope-3-8b-base-w64k-l50").sae("layer_99")
