"""Transcoder training on the bundled tiny model, its files read by SAELens and sparsify, the CLI, and the
bundled ``tiny:mlp{L}-transcoder`` skip transcoders (checked against SAELens's own loader)."""
from __future__ import annotations

import json

import pytest
import torch

from saescope import SAE, LanguageModel, TrainConfig, train_sae
from saescope.assets import tiny_sae_dir
from saescope.cli import main

HOOK, OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
TEXT = ("Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes. But I warn you, if you "
        "don't tell me that this means war, if you still try to defend the infamies and horrors perpetrated by that "
        "Antichrist, I really believe he is Antichrist, I will have nothing more to do with you. ") * 8


@pytest.fixture(scope="module")
def lm():
    return LanguageModel.from_pretrained("tiny")


@pytest.fixture(scope="module")
def pairs(lm):
    """(x, y) at the MLP of layer 1 for every non-BOS token of seeded random windows of the tiny corpus text."""
    from saescope.data import token_contexts

    ids = torch.stack(list(token_contexts(lm, [TEXT * 6], 64, shuffle_buffer=0)))
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([ids, torch.randint(1, lm.info.d_vocab, (160, 64), generator=g)])  # varied tokens
    ids[:, 0] = lm.info.bos_token_id
    with torch.no_grad():
        acts = lm.run(ids, capture=[HOOK, OUT])
    return acts[HOOK][:, 1:].reshape(-1, 256), acts[OUT][:, 1:].reshape(-1, 256)


def _ev(y, y_hat):
    return 1 - float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


@pytest.fixture(scope="module")
def trained(pairs, tmp_path_factory):
    x, y = pairs
    out = tmp_path_factory.mktemp("tc") / "run"
    cfg = TrainConfig(architecture="batchtopk", d_sae=256, k=16, skip=True, batch_size=512, total_tokens=30_720,
                      lr=2e-3, model="tiny", hook=HOOK, target_hook=OUT, plots=False, log_every=5)
    sae = train_sae((x[::2], y[::2]), cfg, out_dir=out)
    return sae, out


def test_transcoder_training_reduces_target_mse(pairs, trained):
    x, y = pairs
    sae, out = trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["mse"] < 0.5 * rows[0]["mse"]                      # the loss falls during training
    held_x, held_y = x[1::2], y[1::2]                                   # tokens it was not trained on
    with torch.no_grad():
        ev = _ev(held_y, sae(held_x))
        ev_mean_only = _ev(held_y, sae.b_dec.expand_as(held_y))
    assert ev > 0.5 and ev_mean_only < 0.05, (ev, ev_mean_only)
    assert sae.is_transcoder and sae.cfg.skip and sae.cfg.architecture == "jumprelu"
    meta = sae.cfg.metadata
    assert (meta.hook_name, meta.hook_name_out, meta.model_name) == (HOOK, OUT, "tiny")


def test_trained_transcoder_loads_in_saelens(pairs, trained):
    from sae_lens import SAE as LensSAE

    sae, out = trained
    theirs = LensSAE.load_from_disk(str(out), device="cpu")
    assert type(theirs).__name__ == "JumpReLUSkipTranscoder"
    x = pairs[0][:300]
    with torch.no_grad():
        assert (theirs.encode(x) - sae.encode(x)).abs().max() < 1e-5
        assert (theirs(x) - sae(x)).abs().max() < 1e-5


def test_topk_transcoder_round_trips_through_sparsify(pairs, tmp_path):
    sparsify = pytest.importorskip("sparsify")
    x, y = pairs
    cfg = TrainConfig(architecture="topk", d_sae=128, k=8, skip=True, batch_size=512, total_tokens=5120, lr=2e-3,
                      hook=HOOK, target_hook=OUT, plots=False)
    sae = train_sae((x, y), cfg)
    assert sae.cfg.architecture == "topk" and sae.cfg.skip
    sae.save(tmp_path / "layers.1.mlp", format="sparsify")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "layers.1.mlp")
    xs = x[:300]
    with torch.no_grad():
        enc = theirs.encode(xs)
        dense = torch.zeros(300, 128).scatter(-1, enc.top_indices, enc.top_acts)
        assert (dense - sae.encode(xs)).abs().max() < 1e-5
        assert (theirs(xs).sae_out - sae(xs)).abs().max() < 1e-5
        again = SAE.load(tmp_path / "layers.1.mlp")
        assert (again(xs) - sae(xs)).abs().max() < 1e-5


def test_pair_sources_refuse_bad_input(pairs):
    from saescope.errors import ConfigError, InputError

    x, y = pairs
    with pytest.raises(InputError, match="input rows but"):
        train_sae((x[:100], y[:99]), TrainConfig(architecture="topk", d_sae=32, k=4, batch_size=50, total_tokens=100))
    with pytest.raises(ConfigError, match="transcoders train as"):
        train_sae((x[:100], y[:100]), TrainConfig(architecture="relu", d_sae=32, batch_size=50, total_tokens=100))
    with pytest.raises(ConfigError, match="set target_hook"):
        TrainConfig(skip=True)


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_bundled_transcoders_match_saelens(lm, layer):
    from sae_lens import SAE as LensSAE

    hook, out = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    ours = SAE.from_spec(f"tiny:mlp{layer}-transcoder")
    assert ours.is_transcoder and ours.cfg.skip
    stored = json.loads((tiny_sae_dir(f"mlp{layer}-transcoder") / "cfg.json").read_text())
    assert stored["dtype"] == "float16" and stored["architecture"] == "jumprelu_skip_transcoder"
    assert (ours.cfg.metadata.hook_name, ours.cfg.metadata.hook_name_out) == (hook, out)
    theirs = LensSAE.load_from_disk(str(tiny_sae_dir(f"mlp{layer}-transcoder")), device="cpu", dtype="float32")
    assert type(theirs).__name__ == "JumpReLUSkipTranscoder"
    ours = ours.float()
    ids = lm.to_tokens(TEXT[:400], prepend_bos=True)
    with torch.no_grad():
        acts = lm.run(ids, capture=[hook, out])
        x, y = acts[hook][0, 1:], acts[out][0, 1:]
        assert (theirs.encode(x) - ours.encode(x)).abs().max() < 1e-5
        assert (theirs(x) - ours(x)).abs().max() < 1e-5
        assert _ev(y, ours(x)) > 0.6  # it predicts the MLP's output on ordinary text
    card = json.loads((tiny_sae_dir(f"mlp{layer}-transcoder") / "eval.json").read_text())
    assert card["hook"] == out and card["ce_loss_recovered"] > 0.5


def test_cli_trains_a_transcoder_and_refuses_bad_options(tmp_path, capsys):
    docs = tmp_path / "docs.txt"
    docs.write_text(TEXT * 4)
    code = main(["train", "--model", "tiny", "--hook", "blocks.0.ln2.hook_normalized", "--target-hook",
                 "blocks.0.hook_mlp_out", "--skip", "--architecture", "batchtopk", "--dataset", str(docs),
                 "--d-sae", "64", "--k", "4", "--batch-size", "256", "--tokens", "1024", "--context-size", "64",
                 "--out", str(tmp_path / "tc"), "--json", "--no-plots"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["d_sae"] == 64
    cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu_skip_transcoder" and cfg["d_out"] == 256
    assert cfg["metadata"]["hook_name_out"] == "blocks.0.hook_mlp_out"
    for argv, match in ((["--target-hook", "blocks.0.hook_mlp_out", "--architecture", "relu"], "transcoders train as"),
                        (["--skip"], "set target_hook"),
                        (["--target-hook", "blocks.0.hook_nope"], "blocks.0.hook_nope")):
        code = main(["train", "--model", "tiny", "--hook", "blocks.0.ln2.hook_normalized", "--dataset", str(docs),
                     "--out", str(tmp_path / "bad"), *argv])
        err = capsys.readouterr().err
        assert code == 2 and err.strip().count("\n") == 0 and match in err, err


def test_cli_read_and_steer_with_a_transcoder(lm, capsys):
    sae = SAE.from_spec("tiny:mlp1-transcoder").float()
    text = "The king of France went to war"
    assert main(["read", "--sae", "tiny:mlp1-transcoder", "--top", "3", "--json", text]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = lm.to_tokens(text, prepend_bos=True)
    with torch.no_grad():
        f = sae.encode(lm.run(ids, capture=["blocks.1.ln2.hook_normalized"])["blocks.1.ln2.hook_normalized"])[0]
    assert out["hook"] == "blocks.1.ln2.hook_normalized"
    top = [feat["index"] for feat in out["tokens"][-1]["features"]]
    assert top == f[-1].topk(3).indices.tolist()
    feature = top[0]
    assert main(["steer", "--sae", "tiny:mlp1-transcoder", "--feature", str(feature), "--method", "ablate",
                 "--max-new-tokens", "5", "--seed", "1", "--json", "The king"]) == 0
    steered = json.loads(capsys.readouterr().out)
    assert steered["baseline"] and steered["steered"]


def test_cli_harvests_pairs_then_trains_from_them(tmp_path, capsys):
    docs = tmp_path / "docs.txt"
    docs.write_text(TEXT * 4)
    code = main(["harvest", "--model", "tiny", "--hook", HOOK, "--target-hook", OUT, "--dataset", str(docs),
                 "--tokens", "700", "--context-size", "64", "--out", str(tmp_path / "pairs"), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["tokens"] == 700
    lm = LanguageModel.from_pretrained("tiny")
    from saescope.data.activations import ActivationCache

    from saescope.data import iter_texts, token_contexts

    rows = ActivationCache.open(tmp_path / "pairs")[0:63]          # the first context, BOS dropped
    ids = next(iter(token_contexts(lm, iter_texts(str(docs)), 64, prepend_bos=True, seed=0)))[None]
    with torch.no_grad():
        acts = lm.run(ids, capture=[HOOK, OUT])
    torch.testing.assert_close(rows[:, :256], acts[HOOK][0, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rows[:, 256:], acts[OUT][0, 1:], atol=1e-5, rtol=1e-5)
    # no --target-hook needed: the pair cache says what it holds
    code = main(["train", "--activations", str(tmp_path / "pairs"), "--architecture", "topk", "--d-sae", "64",
                 "--k", "4", "--batch-size", "100", "--tokens", "400", "--out", str(tmp_path / "tc"), "--no-plots"])
    assert code == 0, capsys.readouterr().err
    sae = SAE.load(tmp_path / "tc")
    assert sae.is_transcoder and (sae.d_in, sae.d_out) == (256, 256)
    assert (sae.cfg.metadata.hook_name, sae.cfg.metadata.hook_name_out) == (HOOK, OUT)
