"""Matryoshka BatchTopK training: nested prefix losses, the saved file read by SAELens (and its prefix decode
compared with SAELens's own Matryoshka SAE), and the per-prefix metrics of ``evaluate_sae`` / ``saescope eval``."""
from __future__ import annotations

import json

import pytest
import torch

from saescope import SAE, LanguageModel, TrainConfig, train_sae
from saescope.cli import main
from saescope.errors import ConfigError
from saescope.evals.prefixes import prefix_sae

WIDTHS = (8, 32)


def _hierarchical(n: int, seed: int = 0) -> torch.Tensor:
    """Tokens made of a few frequent parent directions, each with rarer children added on top."""
    g = torch.Generator().manual_seed(seed)
    parents, children = torch.randn(8, 24, generator=g), torch.randn(8, 6, 24, generator=g) * 0.5
    p = torch.randint(0, 8, (n,), generator=g)
    c = torch.randint(0, 6, (n,), generator=g)
    has_child = torch.rand(n, generator=g) < 0.7
    x = parents[p] * (1 + torch.rand(n, 1, generator=g))
    return x + has_child[:, None] * children[p, c] + 0.05 * torch.randn(n, 24, generator=g)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mt") / "run"
    cfg = TrainConfig(architecture="matryoshka", d_sae=64, k=3, matryoshka_widths=WIDTHS, batch_size=512,
                      total_tokens=40_960, lr=3e-3, plots=False, log_every=10)
    return train_sae(_hierarchical(20_000), cfg, out_dir=out), out


def test_prefix_losses_are_nested_and_the_config_is_saved(run):
    sae, out = run
    assert sae.cfg.architecture == "batchtopk" and sae.cfg.matryoshka_widths == (8, 32, 64) and sae.cfg.k == 3
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["mse_8"] > final["mse_32"] > final["mse_64"] == final["mse"]
    assert 2.4 < final["l0"] < 3.6 and final["explained_variance"] > 0.8
    assert SAE.load(out).cfg == sae.cfg
    with pytest.raises(ConfigError, match="strictly increasing"):
        TrainConfig(architecture="matryoshka", matryoshka_widths=(32, 8))
    with pytest.raises(ConfigError, match="only for architecture matryoshka"):
        TrainConfig(architecture="topk", matryoshka_widths=(8, 16))


def test_saelens_loads_it_and_decodes_prefixes_alike(run):
    from sae_lens import SAE as LensSAE
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                        MatryoshkaBatchTopKTrainingSAEConfig)

    sae, out = run
    raw = json.loads((out / "cfg.json").read_text())
    assert raw["architecture"] == "jumprelu"
    assert raw["metadata"]["training_architecture"] == "matryoshka_batchtopk"
    theirs = LensSAE.load_from_disk(str(out), device="cpu")
    assert type(theirs).__name__ == "JumpReLUSAE"
    x = _hierarchical(400, seed=1)
    with torch.no_grad():
        f = sae.encode(x)
        assert (theirs.encode(x) - f).abs().max() < 1e-5 and (theirs(x) - sae(x)).abs().max() < 1e-5
        # SAELens's Matryoshka SAE with the same weights: its level reconstructions = saescope's prefix SAEs
        mt = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=24, d_sae=64, k=3, matryoshka_widths=list(sae.cfg.matryoshka_widths),
            rescale_acts_by_decoder_norm=False, apply_b_dec_to_input=True))
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(mt, name).copy_(getattr(sae, name))
        levels = dict(mt._iterable_decode(f, include_outer_loss=True))
        assert sorted(levels) == [8, 32, 64]
        for w, recon in levels.items():
            p = prefix_sae(sae, w)
            assert (p.encode(x) - f[:, :w]).abs().max() < 1e-5
            assert (p(x) - recon).abs().max() < 1e-5


def test_eval_reports_each_prefix(tmp_path, capsys):
    lm = LanguageModel.from_pretrained("tiny")
    hook = "blocks.1.hook_resid_pre"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, lm.info.d_vocab, (48, 64), generator=g)
    ids[:, 0] = lm.info.bos_token_id
    with torch.no_grad():
        acts = lm.run(ids, capture=[hook])[hook]
    cfg = TrainConfig(architecture="matryoshka", d_sae=256, k=8, matryoshka_widths=(32, 128), batch_size=512,
                      total_tokens=8192, lr=2e-3, plots=False, model="tiny", hook=hook)
    sae = train_sae(acts[:, 1:].reshape(-1, 256), cfg, out_dir=tmp_path / "mt")
    from saescope import evaluate_sae

    result = evaluate_sae(lm, sae, ids[:8], tokens=8 * 64, batch_size=4)
    assert [p.width for p in result.prefixes] == [32, 128]
    x = acts[:8, 1:].reshape(-1, 256)
    with torch.no_grad():
        f = sae.encode(x)
        for p in result.prefixes:  # independently: latents [0, w) decoded by hand
            y_hat = f[:, :p.width] @ sae.W_dec[:p.width] + sae.b_dec
            ev = 1 - float((x - y_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
            assert abs(p.explained_variance - ev) < 1e-4, (p.width, p.explained_variance, ev)
            assert abs(p.l0 - float((f[:, :p.width] > 0).sum(-1).float().mean())) < 1e-4
            assert p.ce_loss_recovered == p.ce_loss_recovered  # computed (not NaN)
    assert result.prefixes[0].explained_variance < result.prefixes[1].explained_variance < result.explained_variance
    docs = tmp_path / "docs.txt"
    docs.write_text(" ".join(lm.tokenizer.decode(row[1:].tolist()) for row in ids))
    assert main(["eval", "--sae", str(tmp_path / "mt"), "--dataset", str(docs), "--tokens", "256", "--no-downstream", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["width"] for p in out["prefixes"]] == [32, 128] and out["prefixes"][0]["l0"] is not None and out["prefixes"][0]["ce_loss_recovered"] is None
