"""SAELens layouts beyond plain SAEs, against SAELens 6.54's own classes on the same weights: transcoders saved by
SAELens, Matryoshka BatchTopK (training checkpoints and inference saves), training checkpoints of TopK and
JumpReLU SAEs; and what saescope writes for each (SAELens loads it, or saescope alone reads it back)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from saescope.sae import SAE, SAEConfig

sl = pytest.importorskip("sae_lens")
from sae_lens.saes.sae import SAEMetadata as LensMetadata  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def _randomize(module, seed: int, threshold_scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if name == "threshold":
                p.abs_().mul_(threshold_scale / 0.3)


TRANSCODERS = [("Transcoder", "TranscoderConfig", "relu", False),
               ("SkipTranscoder", "SkipTranscoderConfig", "relu", True),
               ("JumpReLUTranscoder", "JumpReLUTranscoderConfig", "jumprelu", False),
               ("JumpReLUSkipTranscoder", "JumpReLUSkipTranscoderConfig", "jumprelu", True)]


@pytest.mark.parametrize("cls,cfg_cls,arch,skip", TRANSCODERS, ids=[t[0] for t in TRANSCODERS])
def test_saelens_saved_transcoders_load_in_saescope(tmp_path, cls, cfg_cls, arch, skip):
    cfg = getattr(sl, cfg_cls)(d_in=12, d_sae=48, d_out=10, apply_b_dec_to_input=False,
                                  metadata=LensMetadata(hook_name="blocks.1.ln2.hook_normalized",
                                                        hook_name_out="blocks.1.hook_mlp_out"))
    theirs = getattr(sl, cls)(cfg)
    _randomize(theirs, seed=len(cls))
    theirs.save_model(str(tmp_path))
    assert "saescope" not in json.loads((tmp_path / "cfg.json").read_text())
    ours = SAE.load(tmp_path)
    assert ours.cfg.architecture == arch and ours.cfg.d_out == 10 and ours.cfg.skip == skip
    assert ours.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    x = torch.randn(9, 12, generator=torch.Generator().manual_seed(2)) * 2
    with torch.no_grad():
        f = ours.encode(x)
        torch.testing.assert_close(f, theirs.encode(x), **TOL)
        torch.testing.assert_close(ours(x), theirs(x), **TOL)
    assert (f > 0).any() and (f == 0).any()


def test_topk_transcoder_is_saescope_only(tmp_path):
    """SAELens 6.54 has no TopK transcoder class: saescope writes 'topk_transcoder' and reads it back."""
    ours = SAE(SAEConfig("topk", 12, 48, k=5, d_out=10, skip=True,
                         metadata={"hook_name": "blocks.0.ln2.hook_normalized", "hook_name_out": "blocks.0.hook_mlp_out"}))
    _randomize(ours, 1)
    ours.save(tmp_path / "tc")
    raw = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert raw["architecture"] == "topk_skip_transcoder"
    with pytest.raises(Exception):
        sl.SAE.load_from_disk(str(tmp_path / "tc"), device="cpu")
    del raw["saescope"]  # the SAELens-style fields alone are enough
    (tmp_path / "tc" / "cfg.json").write_text(json.dumps(raw))
    again = SAE.load(tmp_path / "tc")
    drop = lambda c: {k: v for k, v in c.to_dict().items() if k != "metadata"}  # noqa: E731
    assert drop(again.cfg) == drop(ours.cfg) and again.cfg.metadata.hook_name_out == "blocks.0.hook_mlp_out"
    x = torch.randn(6, 12)
    with torch.no_grad():
        torch.testing.assert_close(again(x), ours(x))


def _matryoshka(widths=(8, 24, 48)):
    from sae_lens.saes.matryoshka_batchtopk_sae import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig

    cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=12, d_sae=48, k=4, matryoshka_widths=list(widths))
    sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    _randomize(sae, 5)
    sae.topk_threshold.fill_(0.35)
    return sae


def test_matryoshka_batchtopk_training_and_inference_saves(tmp_path):
    trained = _matryoshka()
    trained.save_model(str(tmp_path / "train"))          # architecture matryoshka_batchtopk, topk_threshold
    trained.save_inference_model(str(tmp_path / "inf"))  # SAELens's own conversion to a JumpReLU SAE
    reference = sl.SAE.load_from_disk(str(tmp_path / "inf"), device="cpu")
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(3)) * 2
    for folder in ("train", "inf"):
        ours = SAE.load(tmp_path / folder)
        assert ours.cfg.architecture == "batchtopk" and ours.cfg.k == 4, folder
        assert ours.cfg.matryoshka_widths == (8, 24, 48), folder
        with torch.no_grad():
            torch.testing.assert_close(ours.encode(x), reference.encode(x), **TOL)
            torch.testing.assert_close(ours(x), reference(x), **TOL)
    # saescope's own save: SAELens loads it (a JumpReLU), saescope keeps the widths, also from the SAELens fields
    ours.save(tmp_path / "ours")
    theirs = sl.SAE.load_from_disk(str(tmp_path / "ours"), device="cpu")
    assert type(theirs).__name__ == "JumpReLUSAE"
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), **TOL)
    raw = json.loads((tmp_path / "ours" / "cfg.json").read_text())
    del raw["saescope"]
    (tmp_path / "ours" / "cfg.json").write_text(json.dumps(raw))
    assert SAE.load(tmp_path / "ours").cfg.matryoshka_widths == (8, 24, 48)


def test_matryoshka_widths_missing_last_level_added(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = _matryoshka(widths=(8, 24))  # SAELens appends d_sae as the last level
    trained.save_inference_model(str(tmp_path / "inf"))
    assert SAE.load(tmp_path / "inf").cfg.matryoshka_widths == (8, 24, 48)


def test_topk_training_checkpoint_rescaled_by_decoder_norm(tmp_path):
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    trained = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=12, d_sae=48, k=5, rescale_acts_by_decoder_norm=True))
    _randomize(trained, 9)
    trained.save_model(str(tmp_path / "train"))
    trained.save_inference_model(str(tmp_path / "inf"))
    reference = sl.SAE.load_from_disk(str(tmp_path / "inf"), device="cpu")
    ours = SAE.load(tmp_path / "train")
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), reference.encode(x), **TOL)
        torch.testing.assert_close(ours(x), reference(x), **TOL)


def test_jumprelu_log_threshold_checkpoint(tmp_path):
    """Older JumpReLU training checkpoints store log_threshold; SAELens's loader exponentiates it."""
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    trained = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=12, d_sae=48))
    _randomize(trained, 11)
    trained.save_model(str(tmp_path / "t"))
    w = load_file(str(tmp_path / "t" / "sae_weights.safetensors"))
    w["log_threshold"] = w.pop("threshold").log()
    save_file(w, str(tmp_path / "t" / "sae_weights.safetensors"))
    reference = JumpReLUTrainingSAE.load_from_disk(str(tmp_path / "t"), device="cpu")
    ours = SAE.load(tmp_path / "t")
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(6))
    reference.eval()
    with torch.no_grad():
        f = ours.encode(x)
        torch.testing.assert_close(f, reference.encode(x), **TOL)
    assert (f > 0).any() and (f == 0).any()
