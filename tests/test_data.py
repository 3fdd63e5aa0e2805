"""saescope.data: text sources, token contexts (BOS rule, document separation, seeded shuffle), the activation
stream against per-context forward passes, the on-disk cache, resumable harvest, and training from it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saescope.data import ActivationCache, ActivationStream, harvest, iter_texts, token_contexts
from saescope.errors import HookError, InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only add contention

WORDS = "the cat sat on a mat while rain fell over quiet hills and the river ran to the sea".split()


def _docs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 60)))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def lm(gpt2_dir):
    from saescope.lm import LanguageModel

    return LanguageModel.from_pretrained(str(gpt2_dir), device="cpu")


# ---------------------------------------------------------------------------------------------------------
def test_iter_texts_local_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third", "id": 3}\n')
    pq.write_table(pa.table({"text": ["fourth", None, "fifth"]}), tmp_path / "c.parquet")
    (tmp_path / "ignored.md").write_text("not a text source")
    assert list(iter_texts(str(tmp_path))) == ["first document", "second", "third", "fourth", "fifth"]
    assert list(iter_texts(str(tmp_path / "b.jsonl"))) == ["second", "third"]


def test_iter_texts_errors(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(InputError, match="no column 'text'.*body"):
        list(iter_texts(str(tmp_path / "b.jsonl")))
    (tmp_path / "e.txt").write_text("   \n")
    with pytest.raises(InputError, match="empty"):
        list(iter_texts(str(tmp_path / "e.txt")))
    with pytest.raises(InputError, match="no such"):
        list(iter_texts(str(tmp_path / "missing.jsonl")))
    # an HF dataset name goes through `datasets` (offline here): still one clean line
    with pytest.raises(InputError, match="cannot load the dataset"):
        list(iter_texts("no-such-user/no-such-dataset"))


def test_token_contexts_bos_rule_and_document_separation(lm):
    tok = lm.tokenizer
    docs = _docs(12)
    ctx = list(token_contexts(lm, docs, 32, prepend_bos=True, shuffle_buffer=0))
    bos, eos = lm.info.bos_token_id, lm.info.eos_token_id
    assert all(c.shape == (32,) and c[0] == bos for c in ctx)
    # independent reconstruction: the bodies concatenated are the documents joined by EOS
    expected = []
    for i, d in enumerate(docs):
        if i:
            expected.append(eos)
        expected.extend(tok(d, add_special_tokens=False)["input_ids"])
    body = torch.cat([c[1:] for c in ctx]).tolist()
    assert body == expected[:len(body)] and len(expected) - len(body) < 31
    no_bos = list(token_contexts(lm, docs, 32, prepend_bos=False, shuffle_buffer=0))
    assert torch.cat(no_bos).tolist() == expected[:32 * len(no_bos)]
    # seeded shuffle: same seed same order, different seed different order, same multiset
    a = [c.tolist() for c in token_contexts(lm, docs, 32, seed=1, shuffle_buffer=8)]
    b = [c.tolist() for c in token_contexts(lm, docs, 32, seed=1, shuffle_buffer=8)]
    c = [c.tolist() for c in token_contexts(lm, docs, 32, seed=2, shuffle_buffer=8)]
    assert a == b and a != c and sorted(a) == sorted(x.tolist() for x in ctx)


def test_activation_stream_matches_per_context_forward(lm):
    hook = "blocks.3.hook_resid_post"
    contexts = list(token_contexts(lm, _docs(30), 24, shuffle_buffer=0))
    stream = ActivationStream(lm, hook, iter(contexts), batch_size=64, buffer_tokens=256, seed=0, harvest_batch_size=5)
    batches = list(stream)
    got = torch.cat(batches)
    assert all(b.shape == (64, 64) for b in batches)
    # reference: each context on its own, BOS/EOS positions removed
    special = {lm.info.bos_token_id, lm.info.eos_token_id}
    ref = []
    for c in contexts:
        acts = lm.run(c[None], capture=hook)[hook][0]
        keep = torch.tensor([t not in special for t in c.tolist()])
        ref.append(acts[keep])
    ref = torch.cat(ref)
    assert got.shape[0] == (ref.shape[0] // 64) * 64 and ref.shape[0] - got.shape[0] < 64
    # the stream is a shuffle of the reference rows: match each row to its nearest reference row
    d = torch.cdist(got.double(), ref.double())
    nearest = d.min(1)
    assert float(nearest.values.max()) < 1e-4
    # as multisets (identical rows exist: the same token right after BOS), every row is used at most once
    from collections import Counter

    key = lambda rows: Counter(tuple(r) for r in torch.round(rows.double() * 1e3).long().tolist())  # noqa: E731
    assert not key(got) - key(ref)
    assert not torch.equal(nearest.indices, torch.arange(got.shape[0]))  # actually shuffled
    with pytest.raises(HookError, match="differs from d_in"):
        ActivationStream(lm, hook, iter(contexts), d_in=65)


def test_activation_cache_round_trip(tmp_path):
    cache = ActivationCache.create(tmp_path / "c", d_in=8, meta={"hook": "h"}, shard_tokens=50)
    data = torch.randn(230, 8)
    for s in range(0, 230, 30):
        cache.append(data[s:s + 30], contexts=1)
    cache.finalize()
    opened = ActivationCache.open(tmp_path / "c")
    assert len(opened) == 230 and opened.shape == (230, 8) and len(opened.meta["shards"]) >= 3
    assert opened.meta["contexts_done"] == 8 and opened.meta["complete"]
    idx = np.array([0, 5, 59, 60, 61, 200, 229])
    torch.testing.assert_close(opened.take_rows(idx), data[idx])
    torch.testing.assert_close(opened[100:140], data[100:140])
    with pytest.raises(HookError, match="d_in 8"):
        opened.append(torch.randn(3, 9))
    with pytest.raises(InputError, match="not an activation cache"):
        ActivationCache.open(tmp_path)


def test_harvest_resumes_and_feeds_training(lm, tmp_path):
    from saescope.train import TrainConfig, train_sae

    docs_file = tmp_path / "docs.jsonl"
    docs_file.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs(60)))
    hook = "blocks.1.hook_resid_pre"
    full = harvest(lm, hook, str(docs_file), 1500, tmp_path / "full", context_size=32, batch_size=4, shard_tokens=200)
    assert len(full) == 1500 and full.meta["complete"]
    # interrupted harvest: simulate by stopping early (fewer tokens) then asking for the same target again
    part = harvest(lm, hook, str(docs_file), 1500, tmp_path / "part", context_size=32, batch_size=4, shard_tokens=200)
    meta = json.loads((tmp_path / "part" / "meta.json").read_text())
    keep = 3  # drop the shards after the third, as if the process died there
    for name in meta["shards"][keep:]:
        (tmp_path / "part" / name).unlink()
    for key in ("shards", "shard_sizes", "shard_contexts"):
        meta[key] = meta[key][:keep]
    meta["n_tokens"] = sum(meta["shard_sizes"])
    meta["contexts_done"] = sum(meta["shard_contexts"])
    meta["complete"] = False
    (tmp_path / "part" / "meta.json").write_text(json.dumps(meta))
    resumed = harvest(lm, hook, str(docs_file), 1500, tmp_path / "part", context_size=32, batch_size=4,
                      shard_tokens=200)
    torch.testing.assert_close(resumed[0:1500], full[0:1500])
    with pytest.raises(InputError, match="different hook"):
        harvest(lm, "blocks.2.hook_resid_pre", str(docs_file), 1500, tmp_path / "full", context_size=32)
    # the cache trains an SAE with the harvest's metadata
    sae = train_sae(tmp_path / "full", TrainConfig(architecture="topk", d_sae=128, k=8, batch_size=100,
                                                   total_tokens=3000, plots=False))
    assert sae.cfg.metadata.hook_name == hook and sae.d_in == 64
    assert sae.cfg.metadata.extra["training"]["activations"] == str(tmp_path / "full")


def test_cli_harvest_then_train(gpt2_dir, tmp_path, capsys):
    from saescope.cli import main

    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(_docs(40)))
    code = main(["harvest", "--model", str(gpt2_dir), "--hook", "blocks.0.hook_resid_post", "--dataset", str(docs),
                 "--tokens", "600", "--out", str(tmp_path / "h"), "--context-size", "32", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 600
    code = main(["train", "--activations", str(tmp_path / "h"), "--d-sae", "64", "--k", "4", "--batch-size", "100",
                 "--tokens", "1000", "--out", str(tmp_path / "sae"), "--json", "--no-plots"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["d_sae"] == 64 and (tmp_path / "sae" / "cfg.json").exists()
    # --resume alone reuses the run's settings (finished run: loads it); a changed option is refused in one line
    assert main(["train", "--activations", str(tmp_path / "h"), "--out", str(tmp_path / "sae"), "--resume"]) == 0
    capsys.readouterr()
    code = main(["train", "--activations", str(tmp_path / "h"), "--d-sae", "32", "--out", str(tmp_path / "sae"),
                 "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "different d_sae (64, now 32)" in err
    code = main(["train", "--out", str(tmp_path / "x"), "--hook", "blocks.0.hook_resid_post"])
    assert code == 2 and "--model is required" in capsys.readouterr().err


def test_train_from_model_hook_and_texts(lm, tmp_path):
    from saescope.train import TrainConfig, train_sae

    cfg = TrainConfig(architecture="topk", d_sae=128, k=8, batch_size=200, total_tokens=2000, context_size=32,
                      buffer_tokens=400, plots=False, log_every=5)
    sae = train_sae((lm, "blocks.2.hook_resid_pre", _docs(80)), cfg, out_dir=tmp_path / "s")
    meta = sae.cfg.metadata
    assert meta.hook_name == "blocks.2.hook_resid_pre" and meta.context_size == 32 and sae.d_in == 64
    assert meta.extra["training"]["tokens"] == 2000
    rows = [json.loads(r) for r in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10] and rows[-1]["explained_variance"] > 0
    with pytest.raises(InputError, match="ran out of tokens"):
        train_sae((lm, "blocks.2.hook_resid_pre", _docs(3)), cfg)
