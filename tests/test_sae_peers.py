"""saescope against the peers' own code on the same weights: dictionary_learning (checkpoints and outputs written
by its own classes, tests/peers/make_dictionary_learning.py) and EleutherAI sparsify (its SparseCoder, live):
SAEs, transcoders and skip transcoders, both directions; and the architecture rule (a checkpoint that cannot
say its own architecture is refused, ``architecture=`` supplies it)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from saescope.errors import CheckpointError, ConfigError
from saescope.sae import SAE, SAEConfig

DL = Path(__file__).parent / "data" / "dictionary_learning"
DL_CLASSES = sorted(p.name for p in DL.iterdir()) if DL.is_dir() else []
ARCH = {"AutoEncoder": "relu", "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk",
        "MatryoshkaBatchTopKSAE": "batchtopk", "JumpReluAutoEncoder": "jumprelu", "GatedAutoEncoder": "gated"}
TOL = dict(rtol=1e-5, atol=1e-5)


def _io(cls):
    return torch.load(DL / cls / "io.pt", weights_only=True)


# ---- dictionary_learning ---------------------------------------------------------------------------------
def test_all_dictionary_learning_classes_present():
    assert set(DL_CLASSES) == set(ARCH), DL_CLASSES


@pytest.mark.parametrize("cls", DL_CLASSES)
def test_dictionary_learning_matches_its_own_classes(cls):
    ref = _io(cls)
    sae = SAE.load(DL / cls)
    assert sae.cfg.architecture == ARCH[cls] and sae.cfg.metadata.extra["dict_class"] == cls
    assert sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post"  # from trainer.submodule_name
    assert sae.cfg.metadata.model_name == "EleutherAI/pythia-70m-deduped"
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(ref["x"]), ref["f"], **TOL)
        torch.testing.assert_close(sae(ref["x"]), ref["x_hat"], **TOL)
    assert (ref["f"] > 0).any() and (ref["f"] == 0).any()
    if cls == "MatryoshkaBatchTopKSAE":
        assert sae.cfg.matryoshka_widths == (8, 32, 64)  # cumsum of group_sizes [8, 24, 32]


@pytest.mark.parametrize("cls,arch", [("AutoEncoderTopK", "topk"), ("BatchTopKSAE", "batchtopk"),
                                      ("AutoEncoder", "relu"), ("GatedAutoEncoder", "gated"),
                                      ("JumpReluAutoEncoder", "jumprelu"), ("MatryoshkaBatchTopKSAE", "batchtopk")])
def test_without_config_the_architecture_is_asked_for(tmp_path, cls, arch):
    """AutoEncoderTopK and BatchTopKSAE save the same keys: without config.json nothing may be inferred."""
    shutil.copy(DL / cls / "ae.pt", tmp_path / "ae.pt")
    with pytest.raises(CheckpointError, match="does not say its architecture.*architecture=") as info:
        SAE.load(tmp_path)
    assert "\n" not in str(info.value) and "ae.pt" in str(info.value)
    ref = _io(cls)
    sae = SAE.load(tmp_path, architecture=arch)
    assert sae.cfg.metadata.hook_name is None  # no config: the hook is unknown, not guessed
    with torch.no_grad():
        torch.testing.assert_close(sae(ref["x"]), ref["x_hat"], **TOL)


def test_topk_read_as_batchtopk_would_be_wrong(tmp_path):
    """Why the rule exists: the same AutoEncoderTopK weights read as BatchTopK fire far more latents."""
    shutil.copy(DL / "AutoEncoderTopK" / "ae.pt", tmp_path / "ae.pt")
    x = _io("AutoEncoderTopK")["x"]
    with torch.no_grad():
        l0_topk = (SAE.load(tmp_path, architecture="topk").encode(x) > 0).sum(-1).float().mean()
        l0_btk = (SAE.load(tmp_path, architecture="batchtopk").encode(x) > 0).sum(-1).float().mean()
    assert l0_topk == 6 and l0_btk > 2 * l0_topk


def test_architecture_is_for_local_paths():
    from saescope.errors import InputError

    with pytest.raises(InputError, match="local checkpoint path"):
        SAE.from_spec("gpt2-small-res-jb:blocks.6.hook_resid_pre", architecture="relu")


def test_architecture_must_agree_with_the_file():
    with pytest.raises(CheckpointError, match="says architecture 'topk'.*'relu'"):
        SAE.load(DL / "AutoEncoderTopK", architecture="relu")


def test_convert_cli_asks_then_uses_architecture(tmp_path, capsys):
    from saescope.cli import main

    shutil.copy(DL / "AutoEncoderTopK" / "ae.pt", tmp_path / "ae.pt")
    assert main(["convert", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--architecture" in err[0] and not (tmp_path / "out").exists()
    assert main(["convert", str(tmp_path / "ae.pt"), str(tmp_path / "out"), "--architecture", "topk"]) == 0
    ref = _io("AutoEncoderTopK")
    with torch.no_grad():
        torch.testing.assert_close(SAE.load(tmp_path / "out")(ref["x"]), ref["x_hat"], **TOL)


@pytest.mark.parametrize("submodule,io,hook", [("resid_post_layer_7", "out", "blocks.7.hook_resid_post"),
                                                ("mlp_out_layer_2", "out", "blocks.2.hook_mlp_out"),
                                                ("attn_out_layer_0", None, "blocks.0.hook_attn_out"),
                                                ("resid_4", "out", "blocks.4.hook_resid_post"),
                                                ("embed", "out", "hook_embed"),
                                                ("resid_post_layer_7", "in", None),
                                                ("my_probe_site", "out", None)])
def test_submodule_name_to_hook(tmp_path, submodule, io, hook):
    d = tmp_path / "dl"
    shutil.copytree(DL / "AutoEncoder", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["trainer"]["submodule_name"] = submodule
    cfg["buffer"]["io"] = io
    (d / "config.json").write_text(json.dumps(cfg))
    assert SAE.load(d).cfg.metadata.hook_name == hook


# ---- sparsify ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sparsify():
    return pytest.importorskip("sparsify")


def _coder(sparsify, transcode: bool, skip: bool, seed: int = 0, d_in: int = 16, d_sae: int = 64, k: int = 5):
    coder = sparsify.SparseCoder(d_in, sparsify.SparseCoderConfig(num_latents=d_sae, k=k, transcode=transcode,
                                                                  skip_connection=skip))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return coder


SPARSIFY_CASES = [(False, False), (True, False), (True, True), (False, True)]


@pytest.mark.parametrize("transcode,skip", SPARSIFY_CASES, ids=["sae", "transcoder", "skip-transcoder", "sae+skip"])
def test_sparsify_saved_loads_in_saescope(sparsify, tmp_path, transcode, skip):
    coder = _coder(sparsify, transcode, skip)
    folder = tmp_path / "layers.4.mlp"
    coder.save_to_disk(folder)
    (tmp_path / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m"}))
    ours = SAE.load(folder)
    assert ours.cfg.is_transcoder == (transcode or skip) and ours.cfg.skip == skip
    if transcode:
        assert ours.cfg.metadata.hook_name == "blocks.4.ln2.hook_normalized"
        assert ours.cfg.metadata.hook_name_out == "blocks.4.hook_mlp_out"
    else:
        assert ours.cfg.metadata.hook_name == "blocks.4.hook_mlp_out"
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = coder(x)
        enc = coder.encode(x)
        f = ours.encode(x)
        torch.testing.assert_close(ours(x), theirs.sae_out, **TOL)
    dense = torch.zeros_like(f).scatter(-1, enc.top_indices, enc.top_acts)
    torch.testing.assert_close(f, dense, **TOL)
    assert (f > 0).sum(-1).float().mean() > 1


@pytest.mark.parametrize("transcode,skip", SPARSIFY_CASES[:3], ids=["sae", "transcoder", "skip-transcoder"])
def test_saescope_saved_as_sparsify_loads_in_sparsify(sparsify, tmp_path, transcode, skip):
    meta = {"hook_name": "blocks.1.ln2.hook_normalized", "hook_name_out": "blocks.1.hook_mlp_out"} if transcode else {}
    cfg = SAEConfig("topk", 16, 64, k=5, apply_b_dec_to_input=not transcode, d_out=16 if transcode else None,
                    skip=skip, metadata=meta)
    ours = SAE(cfg, seed=3)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
    ours.save(tmp_path / "layers.1.mlp", format="sparsify")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "layers.1.mlp")
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).sae_out, ours(x), **TOL)
        again = SAE.load(tmp_path / "layers.1.mlp")
        torch.testing.assert_close(again(x), ours(x), **TOL)


def test_sparsify_refuses_what_it_cannot_express(tmp_path):
    with pytest.raises(ConfigError, match="sparsify cannot express architecture jumprelu"):
        SAE(SAEConfig("jumprelu", 8, 32)).save(tmp_path / "x", format="sparsify")
    with pytest.raises(ConfigError, match="d_out=6 != d_in=8"):
        SAE(SAEConfig("topk", 8, 32, k=4, d_out=6)).save(tmp_path / "y", format="sparsify")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_sparsify_post_norm_model_hooks_left_unknown(sparsify, tmp_path):
    coder = _coder(sparsify, True, False)
    coder.save_to_disk(tmp_path / "layers.2.mlp")
    (tmp_path / "config.json").write_text(json.dumps({"model": "google/gemma-2-2b"}))
    meta = SAE.load(tmp_path / "layers.2.mlp").cfg.metadata
    assert meta.hook_name is None and meta.hook_name_out is None
