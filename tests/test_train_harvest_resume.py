"""Harvest resumes at a fine grain: a crash mid-harvest (an exception from inside the harvest loop, as a kill would
leave it) loses at most ``commit_tokens`` rows plus one context batch, a torn append is cut away, Ctrl-C loses
nothing, and the resumed cache holds exactly the rows of an uninterrupted harvest."""
from __future__ import annotations

import json

import numpy as np
import pytest

import saescope.data.activations as acts_mod
from saescope.data import harvest

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "the cat sat on a mat while rain fell over quiet hills and the river ran to the sea".split()
HOOK = "blocks.1.hook_resid_pre"
KW = dict(context_size=32, batch_size=4, shard_tokens=600, commit_tokens=100)


@pytest.fixture(scope="module")
def lm(gpt2_dir):
    from saescope.lm import LanguageModel

    return LanguageModel.from_pretrained(str(gpt2_dir), device="cpu")


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS, size=int(rng.integers(20, 60))))}) + "\n"
                            for _ in range(80)))
    return str(path)


def _interrupt_after(monkeypatch, calls: int, exc: type[BaseException]):
    real = acts_mod.hook_activations
    seen = [0]

    def flaky(*args, **kwargs):
        seen[0] += 1
        if seen[0] > calls:
            raise exc("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(acts_mod, "hook_activations", flaky)


def test_killed_harvest_resumes_from_its_last_commit(lm, docs, tmp_path, monkeypatch):
    full = harvest(lm, HOOK, docs, 2000, tmp_path / "full", **KW)
    assert len(full) == 2000
    _interrupt_after(monkeypatch, 9, RuntimeError)       # 9 batches of 4 contexts x ~31 tokens, ~1100 rows
    with pytest.raises(RuntimeError):
        harvest(lm, HOOK, docs, 2000, tmp_path / "part", **KW)
    monkeypatch.undo()
    meta = json.loads((tmp_path / "part" / "meta.json").read_text())
    kept = meta["n_tokens"] + meta["tail_rows"]
    made = 9 * 4 * 31
    assert meta["shards"] and made - kept <= KW["commit_tokens"] + 4 * 32, (made, kept)
    with open(tmp_path / "part" / "tail.bin", "ab") as f:   # a torn append beyond the committed rows
        f.write(b"\x7f" * 1000)
    resumed = harvest(lm, HOOK, docs, 2000, tmp_path / "part", **KW)
    assert len(resumed) == 2000 and resumed.meta["complete"]
    np.testing.assert_array_equal(resumed[0:2000].numpy(), full[0:2000].numpy())


def test_ctrl_c_commits_what_it_has(lm, docs, tmp_path, monkeypatch):
    _interrupt_after(monkeypatch, 5, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        harvest(lm, HOOK, docs, 2000, tmp_path / "part", **KW)
    monkeypatch.undo()
    meta = json.loads((tmp_path / "part" / "meta.json").read_text())
    assert meta["contexts_done"] == 20 and meta["n_tokens"] + meta["tail_rows"] > 20 * 25  # all 5 batches kept
    resumed = harvest(lm, HOOK, docs, 2000, tmp_path / "part", **KW)
    full = harvest(lm, HOOK, docs, 2000, tmp_path / "full", **KW)
    np.testing.assert_array_equal(resumed[0:2000].numpy(), full[0:2000].numpy())
